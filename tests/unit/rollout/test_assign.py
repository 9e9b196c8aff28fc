"""Sticky canary assignment: shares, stickiness, monotone weights, independence, subjects."""

from __future__ import annotations

import itertools

import pytest

from gateway.rollout.assign import bucket, subject_of, variant
from gateway.rollout.plan import BUCKETS, CanaryStep

SUBJECTS = [subject_of({"user": f"user-{i}"}, {}, None) for i in range(10_000)]
LADDER = (0.5, 1.0, 5.0, 25.0, 33.3, 50.0, 100.0)
ROLLOUT = 7


def canary_set(rollout_id: int, weight: float) -> set[str]:
    buckets = CanaryStep(weight=weight).buckets
    return {s for s in SUBJECTS if variant(rollout_id, s, buckets) == "canary"}


@pytest.mark.parametrize("weight", LADDER)
def test_canary_share_is_within_one_point_of_the_weight(weight: float) -> None:
    share = 100 * len(canary_set(ROLLOUT, weight)) / len(SUBJECTS)

    assert abs(share - weight) <= 1.0, f"{share:.2f}% on the canary at weight {weight}"


def test_buckets_are_in_range_and_spread_over_it() -> None:
    buckets = [bucket(ROLLOUT, s) for s in SUBJECTS]

    assert all(0 <= b < BUCKETS for b in buckets)
    assert min(buckets) < 100 and max(buckets) >= BUCKETS - 100
    assert len(set(buckets)) > 6_000  # 10,000 draws from 10,000 buckets: ~63% distinct


@pytest.mark.parametrize("weight", [1.0, 25.0, 50.0])
def test_the_same_subject_always_gets_the_same_variant(weight: float) -> None:
    buckets = CanaryStep(weight=weight).buckets

    first = [variant(ROLLOUT, s, buckets) for s in SUBJECTS]
    second = [variant(ROLLOUT, s, buckets) for s in SUBJECTS]

    assert first == second
    assert {"stable", "canary"} == set(first)


def test_raising_the_weight_never_moves_a_canary_subject_back_to_stable() -> None:
    sets = [canary_set(ROLLOUT, w) for w in LADDER]

    for lower, higher in itertools.pairwise(sets):
        assert lower <= higher
        assert len(lower) < len(higher)
    assert sets[-1] == set(SUBJECTS)


def test_zero_buckets_put_nobody_on_the_canary() -> None:
    assert all(variant(ROLLOUT, s, 0) == "stable" for s in SUBJECTS)


def test_different_rollouts_draw_independent_buckets() -> None:
    first, second = canary_set(1, 25.0), canary_set(2, 25.0)

    overlap = 100 * len(first & second) / len(SUBJECTS)

    assert first != second
    # Independent draws share about 25% x 25% = 6.25% of the subjects.
    assert abs(overlap - 6.25) <= 1.0, f"{overlap:.2f}% on both canaries"
    assert [bucket(1, s) for s in SUBJECTS[:50]] != [bucket(2, s) for s in SUBJECTS[:50]]


def test_subject_prefers_user_then_session_then_key_owner() -> None:
    session = {"x-session-id": "s-1"}

    assert subject_of({"user": "u-1"}, session, "team-a") == "user:u-1"
    assert subject_of({}, session, "team-a") == "session:s-1"
    assert subject_of({"user": ""}, session, "team-a") == "session:s-1"
    assert subject_of({"user": 42}, {}, "team-a") == "key:team-a"
    assert subject_of({}, {"x-session-id": ""}, "team-a") == "key:team-a"
    assert subject_of({}, {}, None) == "anonymous"
    assert subject_of({}, {}, "") == "anonymous"


def test_a_user_and_a_session_with_the_same_value_are_different_subjects() -> None:
    as_user = subject_of({"user": "abc"}, {}, None)
    as_session = subject_of({}, {"x-session-id": "abc"}, None)
    as_key = subject_of({}, {}, "abc")

    assert len({as_user, as_session, as_key}) == 3
    # Somewhere among many values the prefixes put the two in different variants.
    buckets = CanaryStep(weight=50.0).buckets
    values = [f"v{i}" for i in range(200)]
    assert any(
        variant(ROLLOUT, subject_of({"user": v}, {}, None), buckets)
        != variant(ROLLOUT, subject_of({}, {"x-session-id": v}, None), buckets)
        for v in values
    )


def test_long_subjects_are_cut_before_hashing() -> None:
    long_user = "u" * 10_000

    subject = subject_of({"user": long_user}, {}, None)

    assert subject == "user:" + "u" * 512
    assert subject_of({"user": long_user + "tail"}, {}, None) == subject
