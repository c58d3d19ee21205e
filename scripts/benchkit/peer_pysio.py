"""Peer for scripts/bench: python-socketio's AsyncServer on aiohttp, fed by an aio-pika consumer.

Written the way the python-socketio and aio-pika documentation show it: JWT checked in the
CONNECT handler, one room per user, `await sio.emit(...)` per event, `message.process()` acks
each message. It runs from its own virtualenv in the bench cache (never the gateway's).
Same envelope as the gateway: {"event", "data", "id", "ts", "topic"}.

Usage: python peer_pysio.py PORT AMQP_URL EXCHANGE SECRET
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aio_pika
import jwt
import socketio
from aiohttp import web

PORT, AMQP_URL, EXCHANGE, SECRET = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
app = web.Application()
sio.attach(app)
stats = {"events": 0}


def _user(auth: Any) -> str | None:
    token = auth.get("token") if isinstance(auth, dict) else None
    if not token:
        return None
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else None


@sio.on("connect", namespace="/dashboard")
async def dashboard_connect(sid: str, environ: Any, auth: Any) -> bool:
    return _user(auth) is not None


@sio.on("connect", namespace="/notifications")
async def notifications_connect(sid: str, environ: Any, auth: Any) -> bool:
    user = _user(auth)
    if user is None:
        return False
    await sio.enter_room(sid, f"user:{user}", namespace="/notifications")
    return True


async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    async with message.process():
        stats["events"] += 1
        payload = json.loads(message.body)
        key = message.routing_key or ""
        envelope = {
            "data": payload.get("data"),
            "id": message.message_id,
            "ts": int(time.time() * 1000),
        }
        if key.startswith("dashboard."):
            envelope["topic"] = key[len("dashboard.") :]
            await sio.emit(
                payload.get("event", "dashboard_update"), envelope, namespace="/dashboard"
            )
        elif key.startswith("notification.user."):
            room = "user:" + key[len("notification.user.") :]
            await sio.emit(
                payload.get("event", "notification_new"),
                envelope,
                to=room,
                namespace="/notifications",
            )


async def stats_handler(request: web.Request) -> web.Response:
    return web.json_response(stats)


async def consume(app: web.Application) -> Any:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=256)
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, "dashboard.#")
    await queue.bind(exchange, "notification.#")
    await queue.consume(on_message)
    yield
    await connection.close()


app.router.add_get("/stats", stats_handler)
app.cleanup_ctx.append(consume)

if __name__ == "__main__":
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=int(PORT), access_log=None)
