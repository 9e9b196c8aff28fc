"""The outlier detector's decisions, on a clock the test moves."""

from __future__ import annotations

from gateway.upstream.outliers import OutlierDetector, OutlierPolicy, OutlierState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def detector(clock: Clock, **policy: float) -> OutlierDetector:
    defaults: dict[str, float] = {"consecutive_failures": 3, "base_ejection_s": 10.0}
    return OutlierDetector(OutlierPolicy(**{**defaults, **policy}), clock)  # type: ignore[arg-type]


def fail(d: OutlierDetector, state: OutlierState, times: int, replicas: int = 4) -> list[bool]:
    return [d.failure(state, 0, replicas) for _ in range(times)]


def test_a_burst_of_failures_in_a_row_ejects_and_a_success_resets_the_count() -> None:
    clock = Clock()
    d, state = detector(clock), OutlierState()

    assert fail(d, state, 2) == [False, False]
    d.success(state)
    assert fail(d, state, 2) == [False, False]
    assert not state.ejected(clock.now)
    assert d.failure(state, 0, 4) is True

    assert state.reason == "failures"
    assert state.ejected(clock.now)
    clock.now += 9.9
    assert state.ejected(clock.now) and not state.due(clock.now)
    clock.now += 0.1
    assert state.due(clock.now) and not state.ejected(clock.now)


def test_each_ejection_in_a_row_lasts_longer_up_to_the_maximum() -> None:
    clock = Clock()
    d, state = detector(clock, max_ejection_s=25.0), OutlierState()
    lengths = []
    for _ in range(4):
        fail(d, state, 3)
        lengths.append(state.ejected_until - clock.now)
        clock.now = state.ejected_until
        assert d.readmit(state) == "failures"
        clock.now += 1.0  # back for less than max_ejection_s: the multiplier stays

    assert lengths == [10.0, 20.0, 25.0, 25.0]


def test_a_replica_back_for_long_starts_again_from_the_base_ejection() -> None:
    clock = Clock()
    d, state = detector(clock, max_ejection_s=25.0), OutlierState()
    fail(d, state, 3)
    clock.now = state.ejected_until
    d.readmit(state)
    clock.now += 26.0

    fail(d, state, 3)

    assert state.ejected_until - clock.now == 10.0


def test_ejections_stop_at_the_maximum_share_of_replicas() -> None:
    clock = Clock()
    d = detector(clock, max_ejection_percent=50.0)
    first, second = OutlierState(), OutlierState()

    assert fail(d, first, 3, replicas=2)[-1] is True
    # One of two is out already: a second would be 100% > 50%.
    assert [d.failure(second, 1, 2) for _ in range(5)] == [False] * 5
    assert not second.ejected(clock.now)


def test_a_single_replica_is_never_ejected_for_failures_at_the_default_share() -> None:
    clock = Clock()
    d, state = detector(clock), OutlierState()

    assert fail(d, state, 10, replicas=1) == [False] * 10


def test_unreachable_takes_a_replica_out_at_once_and_a_probe_brings_it_back() -> None:
    clock = Clock()
    d, state = detector(clock), OutlierState()
    state.failures_in_row = 2

    assert d.unreachable(state, "connect") is True
    assert d.unreachable(state, "reset") is False  # already out: counted once
    assert state.reason == "connect" and state.failures_in_row == 0
    assert not state.ejected(clock.now)  # the health state keeps it out, not a timer
    assert d.readmit(state) == "connect"
    assert state.reason is None
    assert d.readmit(state) is None


def test_an_unreachable_replica_out_for_failures_is_now_out_as_unreachable() -> None:
    clock = Clock()
    d, state = detector(clock), OutlierState()
    fail(d, state, 3)

    assert d.unreachable(state, "broken") is True
    assert state.reason == "broken" and state.ejected_until == 0.0
