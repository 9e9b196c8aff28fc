"""Which URLs a subscription may name: http(s) with a host, no credentials, no control
characters, bounded, and never the gateway itself (its host, or loopback, on its port)."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.hooks.urls import check_hook_url, url_problems

OWN = [("127.0.0.1", 8000)]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hooks",
        "https://pipeline.example.com/hooks?token=abc",
        "http://localhost:8001/",
        "http://[::1]:9000/",
        "http://10.1.2.3:8000/",  # another machine on the same port number
        "https://127.0.0.1/",  # port 443
    ],
)
def test_a_receiver_url_is_accepted(url: str) -> None:
    assert check_hook_url(url, own_addresses=OWN) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hooks", "http:// or https://"),
        ("example.com/hooks", "no scheme"),
        ("http:///hooks", "no host"),
        ("http://user:secret@example.com/", "user info"),
        ("http://token@example.com/", "user info"),
        ("http://example.com/a b", "whitespace"),
        ("http://example.com/a\x00", "control"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://example.com/" + "a" * 2048, "longer than 2048"),
        ("http://127.0.0.1:8000/hooks", "gateway itself"),
        ("http://localhost:8000/hooks", "gateway itself"),
        ("http://[::1]:8000/", "gateway itself"),
        ("http://0.0.0.0:8000/", "gateway itself"),
        ("http://127.0.0.2:8000/", "gateway itself"),
    ],
)
def test_a_url_that_cannot_be_a_receiver_is_refused_with_why(url: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_hook_url(url, own_addresses=OWN)
    assert caught.value.param == "url"
    assert caught.value.code == "invalid_hook_url"
    assert caught.value.status_code == 400
    assert reason in caught.value.message


def test_the_gateways_configured_host_is_itself_on_its_port_only() -> None:
    own = [("gateway.internal", 8443)]
    assert url_problems("https://GATEWAY.internal:8443/x", own_addresses=own) == [
        "url points at the gateway itself"
    ]
    assert url_problems("https://gateway.internal:9443/x", own_addresses=own) == []


def test_every_problem_of_a_url_is_listed() -> None:
    problems = url_problems("ftp://user@/a b", own_addresses=OWN)
    assert len(problems) == 4
