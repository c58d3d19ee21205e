"""service.ratelimit: token bucket refill, and the OK → LIMITED → DISCONNECT policy."""

from __future__ import annotations

import pytest

from service.ratelimit import RateLimiter, TokenBucket, Verdict


class Clock:
    """A settable monotonic clock for injection."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_bucket_allows_burst_then_refuses(clock: Clock) -> None:
    bucket = TokenBucket(rate=2, burst=5, clock=clock)
    assert [bucket.allow() for _ in range(6)] == [True] * 5 + [False]


def test_bucket_refills_over_time(clock: Clock) -> None:
    bucket = TokenBucket(rate=2, burst=5, clock=clock)
    for _ in range(5):
        assert bucket.allow()
    clock.now += 0.4  # 0.8 token
    assert not bucket.allow()
    clock.now += 0.1  # 1.0 token
    assert bucket.allow()
    assert not bucket.allow()


def test_bucket_refill_in_small_steps_adds_up(clock: Clock) -> None:
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.allow()
    for _ in range(10):
        clock.now += 0.1
        bucket.tokens  # noqa: B018 - refill in ten float steps
    assert bucket.allow()


def test_bucket_never_exceeds_burst(clock: Clock) -> None:
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    clock.now += 3600
    assert bucket.tokens == 3
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]


def test_bucket_cost(clock: Clock) -> None:
    bucket = TokenBucket(rate=1, burst=4, clock=clock)
    assert bucket.allow(3)
    assert not bucket.allow(2)  # a refused request takes nothing
    assert bucket.allow(1)


def test_bucket_ignores_clock_stepping_back(clock: Clock) -> None:
    bucket = TokenBucket(rate=1, burst=2, clock=clock)
    assert bucket.allow()
    assert bucket.allow()
    clock.now -= 50
    assert not bucket.allow()
    clock.now += 1
    assert bucket.allow()


@pytest.mark.parametrize(("rate", "burst"), [(-1, 5), (float("nan"), 5), (1, 0)])
def test_bucket_rejects_bad_limits(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_limiter_burst_then_limited(clock: Clock) -> None:
    limiter = RateLimiter(rate=20, burst=40, clock=clock)
    assert all(limiter.check() is Verdict.OK for _ in range(40))
    assert limiter.check() is Verdict.LIMITED


def test_limiter_refills_over_time(clock: Clock) -> None:
    limiter = RateLimiter(rate=20, burst=40, clock=clock)
    for _ in range(40):
        limiter.check()
    assert limiter.check() is Verdict.LIMITED
    clock.now += 0.5  # 10 messages' worth
    assert [limiter.check() for _ in range(11)] == [Verdict.OK] * 10 + [Verdict.LIMITED]


def test_flood_disconnects_after_the_strikes(clock: Clock) -> None:
    limiter = RateLimiter(rate=20, burst=40, strikes=10, clock=clock)
    verdicts = [limiter.check() for _ in range(51)]
    assert verdicts == [Verdict.OK] * 40 + [Verdict.LIMITED] * 10 + [Verdict.DISCONNECT]


def test_sustained_flood_reaches_disconnect(clock: Clock) -> None:
    """100 msg/s against 20/s: 80 over-limit per second drain 10 strikes refilled at 1/s."""
    limiter = RateLimiter(rate=20, burst=40, strikes=10, strike_refill_per_s=1, clock=clock)
    verdicts: list[Verdict] = []
    while Verdict.DISCONNECT not in verdicts and clock.now < 110:
        clock.now += 0.01
        verdicts.append(limiter.check())
    assert verdicts[-1] is Verdict.DISCONNECT
    assert verdicts.count(Verdict.LIMITED) >= 10
    assert clock.now < 101.5


def test_client_slightly_over_limit_is_limited_never_disconnected(clock: Clock) -> None:
    """Excess below strike_refill_per_s: some messages refused, the socket stays."""
    limiter = RateLimiter(rate=10, burst=10, strikes=3, strike_refill_per_s=1, clock=clock)
    verdicts = []
    for _ in range(60 * 10):  # 60 s at 10.5 msg/s
        clock.now += 1 / 10.5
        verdicts.append(limiter.check())
    assert Verdict.DISCONNECT not in verdicts
    assert Verdict.LIMITED in verdicts


def test_client_that_slows_down_recovers(clock: Clock) -> None:
    limiter = RateLimiter(rate=5, burst=5, strikes=3, strike_refill_per_s=0.5, clock=clock)
    verdicts = [limiter.check() for _ in range(8)]
    assert verdicts == [Verdict.OK] * 5 + [Verdict.LIMITED] * 3  # no strike left
    clock.now += 6  # strikes refill at 0.5/s: 3 again
    for _ in range(60):  # then well within the rate
        clock.now += 0.5
        assert limiter.check() is Verdict.OK
    clock.now += 1  # message bucket full again
    verdicts = [limiter.check() for _ in range(9)]
    assert verdicts == [Verdict.OK] * 5 + [Verdict.LIMITED] * 3 + [Verdict.DISCONNECT]


def test_verdict_values_are_labels() -> None:
    assert [str(v) for v in Verdict] == ["ok", "limited", "disconnect"]
