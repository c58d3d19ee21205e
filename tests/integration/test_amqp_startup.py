"""A broker that is not there at start-up (contract §2, §4; issue 14).

Waiting helps when the broker refuses, times out or its name does not resolve yet: the gateway
serves, unready, and turns ready by itself. Waiting does not help a wrong password, an unknown
vhost or a conflicting topology: start-up stops with ConfigError (exit 2 in the CLI).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs
from yarl import URL

from service.app import create_app
from service.backbone.amqp import AmqpBackbone
from service.errors import ConfigError
from tests.broker import Broker, Names, Service, TcpProxy, make_backbone, until
from tests.conftest import API_KEY, Gateway, make_config, receive

pytestmark = pytest.mark.amqp

READY_S = 30.0
FAST_RETRIES = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}


async def _start(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    url: str,
    names: Names,
    **backbone_options: Any,
) -> tuple[Gateway, AmqpBackbone]:
    backbone = make_backbone(url, names, **backbone_options)
    config = make_config(
        amqp_url=url,
        exchange=names.events,
        upstream_exchange=names.upstream,
        instance_id=backbone.instance_id,
    )
    app = create_app(config, backbone=backbone)
    return Gateway(await aiohttp_client(app), app), backbone


async def test_a_broker_down_at_start_up_is_waited_for_then_used(
    amqp_broker: Broker,
    amqp_names: Names,
    broker_proxy: TcpProxy,
    service: Service,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    await broker_proxy.cut()  # the port refuses connections, as a broker not up yet
    url = broker_proxy.url(amqp_broker.url)
    with capture_logs() as logs:
        gw, backbone = await _start(aiohttp_client, url, amqp_names, **FAST_RETRIES)
        await until(lambda: "attempt 3" in backbone.reason, 10, "three failed attempts")
    client = gw.client
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 503
    body = await ready.json()
    assert body["status"] == "unavailable"
    assert "connecting to the broker" in body["reason"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.connect("notifications", user="ann")
    assert refused.value.status == 503
    published = await client.post(
        "/api/publish",
        json={"routing_key": "notification.user.ann", "data": 1},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert published.status == 503
    assert (await published.json())["error"]["code"] == "unavailable"
    attempts = [e for e in logs if e["event"] == "backbone_connect_failed"]
    assert [e["attempt"] for e in attempts[:3]] == [1, 2, 3]
    password = URL(amqp_broker.url).password
    assert password
    for entry in attempts:
        assert entry["log_level"] == "warning"
        assert "***" in entry["url"]
        assert f":{password}@" not in entry["url"]

    await broker_proxy.restore()
    await backbone.wait_ready(READY_S)
    assert (await client.get("/readyz")).status == 200
    ws = await gw.connect("notifications", user="ann")
    ident = await service.publish("notification.user.ann", {"data": "hello"})
    assert (await receive(ws))["id"] == ident  # the topology was declared and bound
    assert (await gw.publish("notification.user.ann", {"n": 2})) != ident


async def test_a_name_that_does_not_resolve_yet_is_waited_for(
    amqp_names: Names,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    url = "amqp://guest:guest@broker-not-there-yet.invalid:5672/"
    gw, backbone = await _start(aiohttp_client, url, amqp_names, **FAST_RETRIES)
    await until(lambda: "attempt 2" in backbone.reason, 10, "two failed attempts")
    assert (await gw.client.get("/healthz")).status == 200
    assert (await gw.client.get("/readyz")).status == 503


async def _fails_to_start(url: str, names: Names, *, within_s: float = 10.0) -> ConfigError:
    backbone = make_backbone(url, names)
    with pytest.raises(ConfigError) as error:
        async with asyncio.timeout(within_s):
            await backbone.start(lambda event: None)
    await backbone.close()
    assert error.value.variable == "GATEWAY_AMQP_URL"
    return error.value


async def test_refused_credentials_stop_the_start(amqp_broker: Broker, amqp_names: Names) -> None:
    url = str(URL(amqp_broker.url).with_password("not-the-password"))
    error = await _fails_to_start(url, amqp_names)
    assert "authentication refused" in error.problem
    assert "not-the-password" not in str(error)


async def test_an_unknown_vhost_stops_the_start(amqp_broker: Broker, amqp_names: Names) -> None:
    url = str(URL(amqp_broker.url).with_path("/no-such-vhost-" + amqp_names.tag))
    error = await _fails_to_start(url, amqp_names)
    assert "vhost" in error.problem


async def test_an_events_exchange_of_another_type_stops_the_start(
    amqp_broker: Broker, amqp_names: Names
) -> None:
    connection = await aio_pika.connect(amqp_broker.url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(amqp_names.events, aio_pika.ExchangeType.DIRECT)
    error = await _fails_to_start(amqp_broker.url, amqp_names)
    assert "PRECONDITION_FAILED" in error.problem


async def test_the_app_start_fails_with_the_config_error(
    amqp_broker: Broker, amqp_names: Names
) -> None:
    url = str(URL(amqp_broker.url).with_password("wrong"))
    config = make_config(amqp_url=url, exchange=amqp_names.events, instance_id="startup-x")
    runner = web.AppRunner(create_app(config))
    with pytest.raises(ConfigError) as error:
        await runner.setup()  # the app's startup connects the backbone
    await runner.cleanup()
    assert "cannot connect to RabbitMQ at amqp://guest:***@" in error.value.problem
