"""Logs bind connection context and never carry tokens."""

from __future__ import annotations

import structlog

from service.log import redact
from tests.conftest import Gateway, mint


def test_redact_removes_tokens_from_query_strings_and_headers() -> None:
    token = mint("42")
    text = f"GET /ws/notifications?access_token={token}&since=3 Authorization: Bearer {token}"
    cleaned = redact(text)
    assert token not in cleaned
    assert "since=3" in cleaned
    assert redact(f"token was {token}") == "token was [redacted]"


async def test_connection_lines_carry_context_and_no_token(gateway: Gateway) -> None:
    token = mint("42")
    capture = structlog.testing.LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        ws = await gateway.connect("notifications", query={"access_token": token})
        await ws.close()
        await gateway.node.drain(0, settle_s=2)
    finally:
        structlog.configure(**saved)
    logs = capture.entries
    connected = next(entry for entry in logs if entry["event"] == "connected")
    assert connected["user_id"] == "42"
    assert connected["namespace"] == "notifications"
    assert len(connected["conn_id"]) == 32
    assert all(token not in repr(entry) for entry in logs)
