"""LoginThrottle: failed logins per address are slowed down, then refused for a while.

Unit tests on the class itself; the HTTP behaviour (delays, 429) is in
tests/handlers/test_security.py. Times are real and short.
"""

from __future__ import annotations

import time

from tornado_sched.auth import LoginThrottle, ReplayGuard


def _fail(throttle: LoginThrottle, address: str, times: int) -> None:
    for _ in range(times):
        throttle.failure(address)


def test_no_delay_until_slow_after_then_doubling_up_to_a_ceiling() -> None:
    throttle = LoginThrottle(slow_after=3, block_after=100, block_seconds=60)
    delays = []
    for _ in range(10):
        throttle.failure("10.0.0.1")
        delays.append(throttle.delay("10.0.0.1"))
    assert delays[:2] == [0.0, 0.0]
    assert delays[2:7] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert delays[7:] == [4.0, 4.0, 4.0], "the delay is capped"
    assert not throttle.blocked("10.0.0.1")


def test_blocked_after_block_after_failures_and_only_that_address() -> None:
    throttle = LoginThrottle(slow_after=2, block_after=4, block_seconds=60)
    _fail(throttle, "10.0.0.1", 3)
    assert not throttle.blocked("10.0.0.1")
    throttle.failure("10.0.0.1")
    assert throttle.blocked("10.0.0.1")
    assert not throttle.blocked("10.0.0.2")
    assert throttle.delay("10.0.0.2") == 0.0


def test_success_resets_the_count() -> None:
    throttle = LoginThrottle(slow_after=2, block_after=4, block_seconds=60)
    _fail(throttle, "10.0.0.1", 3)
    assert throttle.delay("10.0.0.1") > 0
    throttle.success("10.0.0.1")
    assert throttle.delay("10.0.0.1") == 0.0
    _fail(throttle, "10.0.0.1", 3)
    assert not throttle.blocked("10.0.0.1"), "the count restarted from zero"


def test_block_lasts_block_seconds_not_the_failure_window() -> None:
    # LOGIN_BLOCK_SECONDS is what an operator configures; the counting window
    # (15 minutes by default) must not stretch a 0.3 s block to 15 minutes.
    throttle = LoginThrottle(slow_after=2, block_after=3, block_seconds=0.3)
    assert throttle.window_seconds > 60
    _fail(throttle, "10.0.0.1", 3)
    assert throttle.blocked("10.0.0.1")
    time.sleep(0.15)
    assert throttle.blocked("10.0.0.1")
    time.sleep(0.25)
    assert not throttle.blocked("10.0.0.1")
    assert throttle.delay("10.0.0.1") == 0.0, "an expired block starts a fresh count"
    throttle.failure("10.0.0.1")
    assert not throttle.blocked("10.0.0.1")


def test_failures_older_than_the_window_are_forgotten() -> None:
    throttle = LoginThrottle(slow_after=2, block_after=3, block_seconds=60, window_seconds=0.2)
    _fail(throttle, "10.0.0.1", 2)
    assert throttle.delay("10.0.0.1") > 0
    time.sleep(0.3)
    assert throttle.delay("10.0.0.1") == 0.0
    throttle.failure("10.0.0.1")
    assert not throttle.blocked("10.0.0.1"), "old failures must not count towards a block"


def test_memory_stays_bounded_under_a_spray_of_addresses() -> None:
    throttle = LoginThrottle(slow_after=2, block_after=3, block_seconds=60)
    for i in range(100_010):
        throttle.failure(f"a{i}")
    assert len(throttle._failures) <= 100_001


def test_replay_guard_accepts_each_key_once_within_its_ttl() -> None:
    guard = ReplayGuard(ttl=0.2)
    assert guard.first_use("n:00000001:c") is True
    assert guard.first_use("n:00000001:c") is False
    assert guard.first_use("n:00000002:c") is True
    time.sleep(0.25)  # a sync unit test: no event loop involved
    assert guard.first_use("n:00000001:c") is True


def test_replay_guard_memory_is_bounded() -> None:
    guard = ReplayGuard(ttl=60, limit=100)
    for i in range(1000):
        assert guard.first_use(f"k{i}")
    assert len(guard._seen) <= 100


def test_a_spray_of_addresses_does_not_lift_a_block() -> None:
    throttle = LoginThrottle(slow_after=1, block_after=2, block_seconds=60)
    throttle.max_tracked = 50
    throttle.failure("attacker")
    throttle.failure("attacker")
    assert throttle.blocked("attacker")
    for i in range(500):
        throttle.failure(f"spray-{i}")
    assert throttle.blocked("attacker")
    assert len(throttle._failures) <= 51
