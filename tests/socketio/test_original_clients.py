"""The original gateway's web app, unchanged, on the embedded backbone (contract §5 v1.1), and
what it did that this gateway does differently (docs/migration.md, "Differences").

The app is tests/socketio/original_client.mjs: socket.io-client v4 with the original pages'
one-parameter handlers. The RabbitMQ run of the same scenario is in test_socketio_amqp.py.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import GatewayFactory, mint
from tests.socketio.conftest import NodeFactory
from tests.socketio.original import open_app, run_unchanged_app


async def test_the_original_app_runs_unchanged(
    start_gateway: GatewayFactory, original_apps: NodeFactory, transport_opts: dict[str, Any]
) -> None:
    gateway = await start_gateway()
    apps = await original_apps(gateway)
    await run_unchanged_app(apps, gateway.publish, transport_opts)


async def test_a_clients_own_dashboard_update_needs_the_scope_and_a_topic(
    start_gateway: GatewayFactory, original_apps: NodeFactory
) -> None:
    """The original re-broadcast whatever a client emitted; here it is a publish."""
    gateway = await start_gateway()
    apps = await original_apps(gateway)
    await open_app(apps, "viewer", mint("1"))
    await open_app(apps, "editor", mint("2", scopes=["dashboard:publish"]))

    # Without the scope: forbidden.
    await apps.send(op="update", name="viewer", payload={"topic": "sales", "data": {"sales": 1}})
    answer = (await apps.expect(name="viewer", type="update_ack"))["answer"]
    assert answer["error"]["code"] == "forbidden", answer
    # The original payload, without a topic: bad_request, nothing is broadcast.
    await apps.send(op="update", name="editor", payload={"sales": 5})
    answer = (await apps.expect(name="editor", type="update_ack"))["answer"]
    assert answer["error"]["code"] == "bad_request", answer
    assert "topic" in answer["error"]["message"]

    # With the scope and a topic: every dashboard client of the topic, the sender included,
    # gets the update (as with the original's re-broadcast), and the ack names its id.
    await apps.send(op="update", name="editor", payload={"topic": "sales", "data": {"sales": 7}})
    answer = (await apps.expect(name="editor", type="update_ack"))["answer"]
    assert set(answer) == {"id"}, answer
    for name in ("viewer", "editor"):
        assert (await apps.expect(name=name, type="chart"))["sales"] == 7
    assert not [line for line in apps.seen if line.get("sales") in (1, 5)]


async def test_a_clients_own_notification_new_is_refused_not_echoed(
    start_gateway: GatewayFactory, original_apps: NodeFactory
) -> None:
    """The original echoed a client's notification_new to the sender; here clients cannot
    create notifications (services publish them)."""
    gateway = await start_gateway()
    apps = await original_apps(gateway)
    await open_app(apps, "tab", mint("42"))

    await apps.send(op="notify", name="tab", payload={"title": "from the client"})
    answer = (await apps.expect(name="tab", type="notify_ack"))["answer"]
    assert answer["error"]["code"] == "unknown_event", answer

    await gateway.publish("notification.user.42", {"title": "barrier"})
    first = await apps.expect(name="tab", type="toast")
    assert first["title"] == "barrier", "the client's own notification_new came back"


async def test_without_a_token_only_a_public_dashboard_connects(
    start_gateway: GatewayFactory, original_apps: NodeFactory
) -> None:
    """The original had no auth on connect; GATEWAY_PUBLIC_NAMESPACES=dashboard keeps
    tokenless dashboards working, notifications always need a token."""
    gateway = await start_gateway(public_namespaces=frozenset({"dashboard"}))
    apps = await original_apps(gateway)
    await apps.send(op="open", name="wallboard", url=apps.base_url, opts={})
    assert (await apps.expect(name="wallboard", type="connect"))["ns"] == "dashboard"
    refused = await apps.expect(name="wallboard", type="connect_error")
    assert (refused["ns"], refused["code"], refused["status"]) == (
        "notifications",
        "unauthorized",
        401,
    )
    await gateway.publish("dashboard.sales", {"sales": 3})
    assert (await apps.expect(name="wallboard", type="chart"))["sales"] == 3

    closed = await start_gateway()  # the default: every namespace needs a token
    apps = await original_apps(closed)
    await apps.send(op="open", name="wallboard", url=apps.base_url, opts={})
    for _ in range(2):
        refused = await apps.expect(name="wallboard", type="connect_error")
        assert (refused["code"], refused["status"]) == ("unauthorized", 401), refused


async def test_browser_origins_must_be_listed(
    start_gateway: GatewayFactory, original_apps: NodeFactory, transport_opts: dict[str, Any]
) -> None:
    """The original answered CORS for any origin; here only GATEWAY_ALLOWED_ORIGINS."""
    gateway = await start_gateway(allowed_origins=("https://app.example",))
    apps = await original_apps(gateway)
    allowed = {**transport_opts, "extraHeaders": {"Origin": "https://app.example"}}
    await open_app(apps, "app", mint("42"), **allowed)

    other = {**transport_opts, "extraHeaders": {"Origin": "https://other.example"}}
    await apps.send(op="open", name="other", url=apps.base_url, token=mint("42"), opts=other)
    for _ in range(2):
        refused = await apps.expect(name="other", type="connect_error")
        # Refused over HTTP (403) before Engine.IO: the client sees a transport error.
        assert refused.get("code") is None, refused
        assert refused["message"] in ("xhr poll error", "websocket error"), refused
