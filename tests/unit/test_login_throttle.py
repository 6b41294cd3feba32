"""The per-address login throttle: free failures, doubling waits, a cap, a bounded table."""

from __future__ import annotations

from dragonfork.config import AuthSettings
from dragonfork.http.auth import LoginThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: FakeClock, max_addresses: int = 100) -> LoginThrottle:
    auth = AuthSettings(login_free_failures=2, login_backoff_seconds=1, login_backoff_max_seconds=8)
    return LoginThrottle(auth, clock=clock, max_addresses=max_addresses)


def test_waits_double_after_the_free_failures_up_to_the_cap() -> None:
    clock = FakeClock()
    throttle = _throttle(clock)
    assert throttle.failed("a") == 0 and throttle.retry_after("a") == 0
    waits = []
    for _ in range(6):
        waits.append(throttle.failed("a"))
        assert throttle.retry_after("a") == waits[-1]
        clock.now += waits[-1]
        assert throttle.retry_after("a") == 0
    assert waits == [1, 2, 4, 8, 8, 8]
    assert throttle.retry_after("b") == 0  # other addresses are not affected


def test_success_resets_and_partial_seconds_round_up() -> None:
    clock = FakeClock()
    throttle = _throttle(clock)
    throttle.failed("a")
    throttle.failed("a")
    clock.now += 0.25
    assert throttle.retry_after("a") == 1
    throttle.succeeded("a")
    assert throttle.retry_after("a") == 0 and throttle.failed("a") == 0


def test_the_table_forgets_the_least_recently_seen_address() -> None:
    throttle = _throttle(FakeClock(), max_addresses=3)
    for address in ("a", "b", "c"):
        throttle.failed(address)
        throttle.failed(address)
    throttle.failed("a")  # seen again: now the most recent
    throttle.failed("d")
    assert throttle.retry_after("b") == 0  # evicted
    assert throttle.retry_after("a") > 0 and throttle.retry_after("c") > 0
