"""Failed sign-ins counted per key in a sliding window, with a clock the test moves."""

from __future__ import annotations

import pytest

from mcp_credgate.throttle import FailureWindow, address_key

pytestmark = pytest.mark.no_store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_waits_once_it_reached_the_limit_until_its_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    window = FailureWindow(3, 60, clock=clock)
    for seconds in (0, 10, 20):
        clock.now = 1000 + seconds
        assert window.wait("a") == 0
        window.fail("a")

    assert window.wait("a") == pytest.approx(40)  # the failure at 0 leaves at 60
    assert window.wait("b") == 0
    clock.now = 1060
    assert window.wait("a") == 0
    window.fail("a")
    assert window.wait("a") == pytest.approx(10)


def test_memory_is_bounded_by_forgetting_the_keys_idle_longest() -> None:
    clock = Clock()
    window = FailureWindow(1, 60, max_keys=2, clock=clock)
    window.fail("old")
    window.fail("mid")
    window.fail("old")  # used again: now the newest
    window.fail("new")

    assert window.wait("mid") == 0
    assert window.wait("old") > 0 and window.wait("new") > 0


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "address:192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "address:2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "address:2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "address:192.0.2.7"),
        ("testclient", "address:testclient"),
        (None, "address:unknown"),
    ],
)
def test_an_ipv6_address_counts_by_its_64_and_an_ipv4_one_by_itself(host: str | None, key: str) -> None:
    assert address_key(host) == key
