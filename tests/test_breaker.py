"""The circuit breaker that keeps pull-through answers at cache speed while the upstream is down."""

from __future__ import annotations

import time

from hubmirror.hub.breaker import CircuitBreaker


def test_opens_after_failures_lets_one_probe_through_and_closes_on_an_answer() -> None:
    b = CircuitBreaker(threshold=2, cooldown=1.0)
    assert b.allow()
    b.failure("ConnectionRefused")
    assert b.allow() and not b.is_open()  # one failure is not an outage
    b.failure("ConnectionRefused")
    assert b.is_open() and not b.allow() and b.reason == "ConnectionRefused"
    time.sleep(1.1)
    assert b.allow()  # half-open: one probe goes
    assert not b.allow()  # the others still answer from the cache
    b.success()
    assert b.allow() and b.allow() and not b.is_open()


def test_a_probe_that_never_ends_is_forgotten_and_a_failed_probe_reopens() -> None:
    b = CircuitBreaker(threshold=1, cooldown=1.0)
    b.failure("timeout")
    time.sleep(1.1)
    assert b.allow() and not b.allow()
    time.sleep(1.1)  # the probe never reported back (its client went away)
    assert b.allow()
    b.failure("timeout")
    assert b.is_open() and not b.allow()


def test_a_429_opens_for_as_long_as_it_asks_and_force_opens_at_once() -> None:
    b = CircuitBreaker(threshold=5, cooldown=10, max_cooldown=2.0)
    b.failure("answered 429", wait=3600)
    assert b.is_open() and 0 < b.retry_in() <= 2.0  # capped by max_cooldown
    b2 = CircuitBreaker(threshold=5, cooldown=2.0)
    b2.failure("TimeoutError", force=True)
    assert b2.is_open() and b2.opened == 1
