"""The original gateway's web app against this gateway: the scenario both backbones run.

The app (tests/socketio/original_client.mjs) has the handlers the original pages had:
`(data) => data.sales`, `(n) => n.title`, `emit(..., ack)` and `connect_error`. Before
contract v1.1 they read `undefined` (the first argument was the native frame object), so this
scenario fails there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.conftest import mint
from tests.socketio.driver import NodeClients

#: Publishes `data` with a routing key the way a service does; returns the message id.
Publish = Callable[[str, Any], Awaitable[str]]


async def open_app(apps: NodeClients, name: str, token: str | None, **opts: Any) -> None:
    """Open app `name` (both namespaces) and wait for both to connect."""
    command: dict[str, Any] = {"op": "open", "name": name, "url": apps.base_url, "opts": opts}
    if token is not None:
        command["token"] = token
    await apps.send(**command)
    connected = {(await apps.expect(name=name, type="connect"))["ns"] for _ in range(2)}
    assert connected == {"dashboard", "notifications"}


async def run_unchanged_app(apps: NodeClients, publish: Publish, opts: dict[str, Any]) -> None:
    """Two tabs of one user see charts and toasts, mark a notification read (acked, and the
    other tab hears of it), and a stranger's bad token is a connect_error."""
    await open_app(apps, "tab", mint("42"), **opts)
    await open_app(apps, "phone", mint("42"), **opts)

    await publish("dashboard.sales", {"sales": 12})
    for name in ("tab", "phone"):
        assert (await apps.expect(name=name, type="chart"))["sales"] == 12

    await publish("notification.user.42", {"title": "hello"})
    for name in ("tab", "phone"):
        assert (await apps.expect(name=name, type="toast"))["title"] == "hello"

    await apps.send(op="read", name="tab", id="n-1")
    assert (await apps.expect(name="tab", type="read_ack"))["answer"] == {"id": "n-1"}
    assert (await apps.expect(name="phone", type="read_elsewhere"))["id"] == "n-1"

    await apps.send(op="open", name="stranger", url=apps.base_url, token="not-a-jwt", opts=opts)
    for _ in range(2):
        refused = await apps.expect(name="stranger", type="connect_error")
        assert (refused["code"], refused["status"]) == ("invalid_token", 401), refused
