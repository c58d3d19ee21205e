"""The connection layer on its own, driven by a fake transport: what both transports share.

A transport hands the layer what its handshake carried, a `Dialect` and a close callable;
everything else (token lookup, admission, rate limit, replies, error metrics, close, leave)
must then behave the same whichever protocol is around it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from service import codec
from service.errors import CloseCode, ErrorCode, Refused
from service.metrics import PREFIX
from service.model import ClientMessage, Namespace
from service.transports import connection
from service.transports.connection import ClientConnection, Dialect
from service.transports.context import GATEWAY
from service.transports.handshake import Handshake
from tests.conftest import RECEIVE_TIMEOUT_S, Gateway, GatewayFactory, mint


class FakeTransport:
    """Records what the layer asks of it: frames are JSON lists, closes are (code, reason)."""

    def __init__(self) -> None:
        self.closes: list[tuple[int, str]] = []
        self.dialect = Dialect("fake", self._ack, self._error)

    @staticmethod
    def _ack(namespace: Namespace, ack: int, data: Any) -> bytes:
        return orjson.dumps(["ack", str(namespace), ack, data])

    @staticmethod
    def _error(namespace: Namespace, code: ErrorCode, message: str, ack: int | None) -> bytes:
        return orjson.dumps(["error", str(namespace), ack, str(code)])

    async def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


async def open_conn(
    gateway: Gateway, fake: FakeTransport, handshake: Handshake
) -> ClientConnection:
    ctx = gateway.app[GATEWAY]
    principal = connection.admit(ctx, handshake)
    return await connection.join(ctx, handshake, principal, fake.dialect, fake.close)


async def sent(conn: ClientConnection) -> list[Any]:
    """Every frame the session has queued for the client so far (taken, as a writer would)."""
    async with asyncio.timeout(RECEIVE_TIMEOUT_S):
        batch = await conn.session.next_batch()
    assert batch is not None, "the session is closed"
    return [orjson.loads(frame) for frame in batch]


def errors_counted(gateway: Gateway, code: ErrorCode) -> float:
    value = gateway.app[GATEWAY].metrics.registry.get_sample_value(
        f"{PREFIX}_client_errors_total", {"code": str(code)}
    )
    return value or 0.0


def test_the_token_is_looked_up_in_one_order() -> None:
    query = {"access_token": "from-query", "since": "3"}
    full = Handshake(Namespace.NOTIFICATIONS, "Bearer from-header", query, {"token": "from-auth"})
    assert full.token == "from-auth"
    assert Handshake(Namespace.NOTIFICATIONS, "Bearer from-header", query).token == "from-header"
    assert Handshake(Namespace.NOTIFICATIONS, None, query).token == "from-query"
    # An auth payload without a usable token falls through to the header.
    assert Handshake(Namespace.NOTIFICATIONS, "Bearer h", {}, {"token": 5}).token == "h"
    assert Handshake(Namespace.NOTIFICATIONS).token is None


def test_the_resume_offset_is_looked_up_in_one_order() -> None:
    assert Handshake(Namespace.NOTIFICATIONS, None, {"since": "3"}, {"since": 7}).since == 7
    assert Handshake(Namespace.NOTIFICATIONS, None, {"since": "3"}, {"token": "t"}).since == "3"
    assert Handshake(Namespace.NOTIFICATIONS).since is None


async def test_admission_refuses_without_a_token_and_while_draining(gateway: Gateway) -> None:
    ctx = gateway.app[GATEWAY]
    with pytest.raises(Refused) as missing:
        connection.admit(ctx, Handshake(Namespace.DASHBOARD))
    assert missing.value.status == 401
    gateway.node.begin_drain()
    with pytest.raises(Refused) as draining:
        connection.admit(ctx, Handshake(Namespace.DASHBOARD, f"Bearer {mint('1')}"))
    assert draining.value.status == 503


async def test_a_bad_resume_offset_is_refused_before_the_join(gateway: Gateway) -> None:
    fake = FakeTransport()
    handshake = Handshake(Namespace.NOTIFICATIONS, f"Bearer {mint('1')}", {"since": "x"})
    with pytest.raises(Refused) as bad:
        await open_conn(gateway, fake, handshake)
    assert bad.value.status == 400
    assert len(gateway.node.hub) == 0


async def test_replies_and_errors_are_spelled_by_the_dialect_and_counted(
    gateway: Gateway,
) -> None:
    fake = FakeTransport()
    conn = await open_conn(gateway, fake, Handshake(Namespace.DASHBOARD, f"Bearer {mint('1')}"))
    assert conn.session.transport == "fake"
    before = errors_counted(gateway, ErrorCode.UNKNOWN_EVENT)

    await conn.receive(lambda: ClientMessage("subscribe", {"topics": ["sales"]}), ack=1)
    await conn.receive(lambda: ClientMessage("no_such_event", None, ack=2))

    def bad() -> ClientMessage:
        raise codec.AckedProtocolError(ErrorCode.BAD_REQUEST, "bad frame", 3)

    await conn.receive(bad)
    frames = await sent(conn)
    assert frames[0][:3] == ["ack", "dashboard", 1]
    assert frames[1] == ["error", "dashboard", 2, "unknown_event"]
    assert frames[2] == ["error", "dashboard", 3, "bad_request"]
    assert errors_counted(gateway, ErrorCode.UNKNOWN_EVENT) == before + 1
    conn.finish()


async def test_the_rate_limit_answers_then_closes(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(rate_limit_per_s=0.001, rate_limit_burst=1)
    fake = FakeTransport()
    conn = await open_conn(gateway, fake, Handshake(Namespace.DASHBOARD, f"Bearer {mint('1')}"))
    message = ClientMessage("subscribe", {"topics": ["sales"]}, ack=1)
    await conn.receive(lambda: message)  # the burst
    await conn.receive(lambda: message)  # over it: answered, not handled
    frames = await sent(conn)
    assert frames[0][:3] == ["ack", "dashboard", 1]
    assert frames[1] == ["error", "dashboard", 1, "rate_limited"]
    for _ in range(50):  # 10 strikes, refilled at 1/s: the flood ends in a close
        if conn.session.closed:
            break
        await conn.receive(lambda: message)
    assert conn.session.close_code == CloseCode.RATE_LIMITED
    conn.finish()


async def test_close_uses_the_sessions_code_and_finish_leaves_once(gateway: Gateway) -> None:
    fake = FakeTransport()
    conn = await open_conn(gateway, fake, Handshake(Namespace.DASHBOARD, f"Bearer {mint('1')}"))
    assert len(gateway.node.hub) == 1
    conn.session.close(CloseCode.SLOW_CONSUMER, "too slow")
    await conn.close()
    assert fake.closes == [(CloseCode.SLOW_CONSUMER, "too slow")]
    conn.finish(CloseCode.NORMAL, "ignored: closed already")
    conn.finish()
    assert conn.finished
    assert len(gateway.node.hub) == 0
    assert conn.session.close_code == CloseCode.SLOW_CONSUMER


async def test_a_resume_the_client_already_made_is_answered_with_an_error(
    gateway: Gateway,
) -> None:
    fake = FakeTransport()
    handshake = Handshake(Namespace.NOTIFICATIONS, f"Bearer {mint('1')}", {"since": "0"})
    conn = await open_conn(gateway, fake, handshake)
    assert conn.since == 0
    await gateway.node.resume(conn.session, 0)  # as if the client emitted `resume` first
    await conn.resume()
    assert ["error", "notifications", None, "bad_request"] in await sent(conn)
    assert conn.since is None
    conn.finish()


async def test_an_abandoned_connection_leaves_without_a_disconnect(gateway: Gateway) -> None:
    fake = FakeTransport()
    conn = await open_conn(gateway, fake, Handshake(Namespace.DASHBOARD, f"Bearer {mint('1')}"))
    conn.abandon()
    conn.finish()  # nothing more: it left already
    assert conn.finished
    assert len(gateway.node.hub) == 0
    assert not conn.session.closed
    labels = {"gateway_namespace": "dashboard", "transport": "fake", "code": "1000"}
    registry = gateway.app[GATEWAY].metrics.registry
    assert registry.get_sample_value(f"{PREFIX}_disconnects_total", labels) is None
