"""Demo mode: the page, the dev token endpoint and the synthetic producer exist only with
`GATEWAY_DEMO=1`, and what they give works against the real gateway."""

from __future__ import annotations

import asyncio
import configparser
import fnmatch
import json
import random
from pathlib import Path
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request

from service.auth import Authenticator
from service.backbone.memory import MemoryBackbone
from service.bindings import Bindings
from service.demo_producer import DEMO_USER, METRICS, DemoProducer
from service.model import Event, Principal
from service.node import Node
from service.transports import demo_page
from tests.conftest import SECRET, Gateway, GatewayFactory, receive, request

ROOT = Path(__file__).resolve().parents[2]
DEMO_PATHS = ["/demo", "/demo/", "/demo/token", "/demo/info", "/demo/realtime.js"]


@pytest.mark.parametrize("path", DEMO_PATHS)
async def test_demo_routes_are_absent_by_default(gateway: Gateway, path: str) -> None:
    resp = await gateway.client.get(path, allow_redirects=False)
    assert resp.status == 404


@pytest.fixture
async def demo(start_gateway: GatewayFactory) -> Gateway:
    return await start_gateway(demo=True)


async def test_page_and_client_are_served_with_a_strict_policy(demo: Gateway) -> None:
    resp = await demo.client.get("/demo", allow_redirects=False)
    assert resp.status == 308
    assert resp.headers["Location"] == "/demo/"
    page = await demo.client.get("/demo/")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert '<script type="module" src="demo.js">' in html
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    for name in ("realtime.js", "demo.js"):
        script = await demo.client.get(f"/demo/{name}")
        assert script.status == 200
        assert script.content_type in ("text/javascript", "application/javascript")
    client = await demo.client.get("/demo/realtime.js")
    assert "export class RealtimeClient" in await client.text()


@pytest.mark.parametrize("path", ["/demo/missing.js", "/demo/..%2Fdemo.py", "/demo/.hidden"])
async def test_only_shipped_files_are_served(demo: Gateway, path: str) -> None:
    resp = await demo.client.get(path)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


def test_package_data_covers_every_static_file() -> None:
    """setup.cfg's package_data ships service/static/ in a non-editable install too."""
    files = demo_page.static_files()
    assert {"demo.html", "demo.js", "demo.css", "realtime.js"} <= set(files)
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    patterns = setup["options.package_data"]["service"].replace(",", " ").split()
    for name in files:
        assert any(fnmatch.fnmatch(f"static/{name}", p) for p in patterns), name


async def test_token_endpoint_mints_a_token_the_gateway_accepts(demo: Gateway) -> None:
    resp = await demo.client.get("/demo/token", params={"sub": "7", "ttl": "60"})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    principal = Authenticator(secret=SECRET).verify(body["token"])
    assert principal.sub == "7"
    assert body["sub"] == "7"
    assert body["exp"] == principal.exp
    assert 55 <= body["expires_in"] <= 60
    ws = await demo.connect("notifications", token=body["token"])
    ident = await demo.publish("notification.user.7", {"title": "hi"})
    assert (await receive(ws))["id"] == ident
    await ws.close()


async def test_token_endpoint_defaults_to_the_demo_user(demo: Gateway) -> None:
    body = await (await demo.client.get("/demo/token")).json()
    assert body["sub"] == DEMO_USER


@pytest.mark.parametrize(
    "params",
    [{"sub": "a*b"}, {"sub": ""}, {"ttl": "abc"}, {"ttl": "1"}, {"ttl": "1e9"}, {"ttl": "nan"}],
)
async def test_token_endpoint_refuses_bad_input(demo: Gateway, params: dict[str, str]) -> None:
    resp = await demo.client.get("/demo/token", params=params)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"


async def test_token_endpoint_needs_a_secret(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(demo=True, jwt_secret="", public_namespaces=frozenset())
    resp = await gateway.client.get("/demo/token")
    assert resp.status == 404


async def test_info_names_the_user_and_the_topics(demo: Gateway) -> None:
    assert await (await demo.client.get("/demo/info")).json() == {
        "user": DEMO_USER,
        "topics": [m.topic for m in METRICS],
    }


async def test_the_producer_feeds_the_dashboard_and_the_demo_user(demo: Gateway) -> None:
    """With demo on, updates for every topic arrive each second, without any publisher."""
    ws = await demo.connect("dashboard", user="someone")
    seen: set[str] = set()
    async with asyncio.timeout(5):
        while seen != {m.topic for m in METRICS}:
            frame = await receive(ws)
            assert frame["event"] == "dashboard_update"
            assert isinstance(frame["data"]["value"], float)
            seen.add(frame["topic"])
    # The last-value cache holds them: a refresh answers at once.
    answer = await request(ws, "dashboard_refresh", {}, ack=9)
    assert answer["event"] == "ack"
    await ws.close()


# -- the producer on its own ----------------------------------------------------------------


async def test_producer_ticks_updates_and_periodic_notifications() -> None:
    backbone = MemoryBackbone()
    events: list[Event] = []
    await backbone.start(events.append)
    await backbone.bind(["dashboard.#", "notification.#"])
    node = Node(backbone, Bindings(backbone), instance_id="t", verify=mint_nothing)
    producer = DemoProducer(node, notification_every=3, rng=random.Random(1))
    for _ in range(6):
        await producer.tick()
    keys = [event.routing_key for event in events]
    assert keys.count("dashboard.sales") == 6
    assert keys.count("notification.user.42") == 2
    for event in events:
        assert isinstance(event.data, dict)
        if event.routing_key.startswith("dashboard."):
            assert event.name == "dashboard_update"
            metric = next(m for m in METRICS if event.routing_key == f"dashboard.{m.topic}")
            assert metric.low <= event.data["value"] <= metric.high
        else:
            assert event.name == "notification_new"
            assert event.data["title"]
    assert producer.published == len(events)

    backbone.set_available(False)
    await producer.tick()  # an outage skips the tick, it does not raise
    assert producer.skipped == len(METRICS)
    assert producer.published == len(events)


def mint_nothing(token: str) -> Principal:
    raise AssertionError("the producer never verifies tokens")


@pytest.mark.parametrize("peer", ["203.0.113.9", "192.168.1.20", "::ffff:10.0.0.1", "2001:db8::1"])
async def test_token_endpoint_answers_loopback_peers_only(demo: Gateway, peer: str) -> None:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    request = make_mocked_request("GET", "/demo/token?sub=7", app=demo.app, transport=transport)
    resp = await demo_page.token(request)
    assert resp.status == 403
    assert resp.body is not None
    assert json.loads(bytes(resp.body))["error"]["code"] == "forbidden"


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
async def test_token_endpoint_answers_every_loopback_address(demo: Gateway, peer: str) -> None:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    request = make_mocked_request("GET", "/demo/token?sub=7", app=demo.app, transport=transport)
    assert (await demo_page.token(request)).status == 200


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
async def test_token_endpoint_refuses_what_a_local_proxy_forwarded(
    demo: Gateway, header: str
) -> None:
    resp = await demo.client.get("/demo/token", headers={header: "203.0.113.9"})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
