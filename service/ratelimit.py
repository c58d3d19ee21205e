"""Per-connection inbound rate limiting: token buckets on an injected clock. Pure, no I/O.

Policy (`RateLimiter.check`, once per inbound client message):

- A message bucket holds at most `burst` tokens, starts full and refills at `rate` tokens per
  second. A message that finds a token takes it and is OK.
- A message that finds the bucket empty is LIMITED (the transport answers `rate_limited` and
  drops it) and takes one strike from a strike bucket: at most `strikes` strikes, starts full,
  refilled at `strike_refill_per_s`.
- A message that finds both buckets empty is DISCONNECT: the transport closes with 4029.

So a fresh connection may send `burst` messages at once, then `rate` per second indefinitely.
Of a flood, the first `strikes` over-limit messages (plus one per strike refilled meanwhile)
are LIMITED and the next is DISCONNECT; a client sending more than `rate` but less than
`rate + strike_refill_per_s` messages per second is limited, never disconnected. A client that
slows down recovers both buckets with time. The verdict is not sticky: after DISCONNECT the
caller closes the connection and drops the limiter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import StrEnum

# Slack for float accumulation: 10 refills of 0.1 token must add up to one whole token.
_EPSILON = 1e-9


class Verdict(StrEnum):
    """What to do with one inbound message."""

    OK = "ok"
    LIMITED = "limited"
    DISCONNECT = "disconnect"


class TokenBucket:
    """`burst` tokens at most, refilled continuously at `rate` per second; starts full."""

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError("rate must be a finite number >= 0")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def allow(self, cost: float = 1.0) -> bool:
        """Take `cost` tokens if that many are available; False (and take none) otherwise."""
        self._refill()
        if self._tokens >= cost - _EPSILON:
            self._tokens -= cost
            return True
        return False

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._last)  # an injected clock may step backwards
        self._last = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)


class RateLimiter:
    """The per-connection policy of the module docstring: OK, LIMITED, then DISCONNECT."""

    __slots__ = ("_messages", "_strikes")

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        strikes: int = 10,
        strike_refill_per_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._messages = TokenBucket(rate, burst, clock)
        self._strikes = TokenBucket(strike_refill_per_s, strikes, clock)

    def check(self) -> Verdict:
        """The verdict for one inbound message, charged to this connection."""
        if self._messages.allow():
            return Verdict.OK
        if self._strikes.allow():
            return Verdict.LIMITED
        return Verdict.DISCONNECT
