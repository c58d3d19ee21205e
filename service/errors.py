"""Error values shared by every layer: close codes, protocol error codes and exceptions.

Close code ranges: 1000-1011 are RFC 6455 codes; 4000-4999 are ours (4001 token expired,
4008 slow consumer, 4029 rate limit exceeded repeatedly).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes the gateway sends."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server draining: reconnect elsewhere
    INVALID_DATA = 1007  # invalid UTF-8
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    TOKEN_EXPIRED = 4001
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029


class ErrorCode(StrEnum):
    """Codes of `error` frames sent to clients."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_EVENT = "unknown_event"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Invalid configuration: names the variable and what is wrong with it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class AuthError(GatewayError):
    """A token that cannot be accepted. `reason` is safe to show to the client."""

    def __init__(self, reason: str, code: str = "unauthorized") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class Refused(GatewayError):
    """A handshake or HTTP request refused before any upgrade."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ProtocolError(GatewayError):
    """A client or publisher message the gateway cannot use; answered with an error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BackboneUnavailable(GatewayError):
    """The backbone cannot take the operation now (broker down, not started, confirm lost)."""


class Disconnect(GatewayError):
    """Stop this connection with a close code; raised inside connection handlers."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(f"{int(code)} {reason}")
        self.code = code
        self.reason = reason
