"""Fixtures for tests against a real RabbitMQ broker (registered from conftest.py).

Where the broker comes from, decided once per session:

1. `GATEWAY_TEST_AMQP_URL` when set;
2. else whatever listens on 127.0.0.1:5672 (guest/guest);
3. else a RabbitMQ container (testcontainers), when Docker answers;
4. else the broker tests fail with a clear message when `CI` is set, and are skipped locally.

Isolation: the session creates its own vhost (through the management API when the plugin is
on, else with a local `rabbitmqctl`) and deletes it at the end; where neither is possible the
URL's vhost is used. On top of that every test gets its own exchange, dead-letter and instance
queue names (`amqp_names`), deleted when it ends, so tests never see each other's messages.

Bindings are read from the broker itself, by the management API or `rabbitmqctl list_bindings`
(`Broker.bindings`); tests that need that skip when neither is reachable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from service.app import create_app
from service.backbone.amqp import AmqpBackbone
from service.transports.context import GATEWAY
from tests.conftest import Gateway, make_config

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
PROBE_TIMEOUT_S = 2.0
ADMIN_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 30.0


# --- finding the broker ---------------------------------------------------------------------


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def _unavailable(reason: str) -> None:
    message = (
        f"RabbitMQ is not available: {reason}. Start it (`rabbitmq-server -detached`, or "
        "`docker run -p 5672:5672 rabbitmq:3-management`) or set GATEWAY_TEST_AMQP_URL."
    )
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class Admin:
    """Management of the broker: the HTTP API when reachable, else a local rabbitmqctl."""

    api: str | None  # http://host:15672/api
    user: str
    password: str
    ctl: str | None  # path of rabbitmqctl (only for a broker on this machine)

    @property
    def available(self) -> bool:
        return self.api is not None or self.ctl is not None

    def _http(self, method: str, path: str, body: Any = None) -> Any:
        assert self.api is not None
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.api}{path}", data=data, method=method)
        auth = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {auth}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT_S) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def _ctl(self, *args: str) -> str:
        assert self.ctl is not None
        done = subprocess.run(
            [self.ctl, "-q", *args],
            capture_output=True,
            text=True,
            timeout=ADMIN_TIMEOUT_S,
            check=True,
        )
        return done.stdout

    def add_vhost(self, vhost: str) -> None:
        if self.api is not None:
            name = urllib.parse.quote(vhost, safe="")
            self._http("PUT", f"/vhosts/{name}")
            perms = {"configure": ".*", "write": ".*", "read": ".*"}
            self._http("PUT", f"/permissions/{name}/{urllib.parse.quote(self.user)}", perms)
        else:
            self._ctl("add_vhost", vhost)
            self._ctl("set_permissions", "-p", vhost, self.user, ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        if self.api is not None:
            self._http("DELETE", f"/vhosts/{urllib.parse.quote(vhost, safe='')}")
        else:
            self._ctl("delete_vhost", vhost)

    def bindings(self, vhost: str, queue: str, exchange: str) -> set[str]:
        """The routing keys binding `exchange` to `queue`, as the broker has them."""
        if self.api is not None:
            v, q = urllib.parse.quote(vhost, safe=""), urllib.parse.quote(queue, safe="")
            rows = self._http("GET", f"/queues/{v}/{q}/bindings")
            return {r["routing_key"] for r in rows if r["source"] == exchange}
        rows = json.loads(
            self._ctl(
                "list_bindings",
                "-p",
                vhost,
                "source_name",
                "destination_name",
                "routing_key",
                "--formatter",
                "json",
            )
        )
        return {
            r["routing_key"]
            for r in rows
            if r["source_name"] == exchange and r["destination_name"] == queue
        }


def _admin_for(url: URL) -> Admin:
    user, password = url.user or "guest", url.password or "guest"
    api = os.environ.get("GATEWAY_TEST_AMQP_MANAGEMENT_URL") or f"http://{url.host}:15672/api"
    try:
        Admin(api, user, password, None)._http("GET", "/overview")
    except (OSError, ValueError, urllib.error.URLError):
        api_ok = None
    else:
        api_ok = api
    local = url.host in ("127.0.0.1", "localhost", "::1")
    ctl = shutil.which("rabbitmqctl") if local else None
    if api_ok is None and ctl is not None:
        try:
            subprocess.run(
                [ctl, "-q", "status"], capture_output=True, timeout=ADMIN_TIMEOUT_S, check=True
            )
        except (OSError, subprocess.SubprocessError):
            ctl = None
    return Admin(api_ok, user, password, ctl)


@dataclass
class Broker:
    """The session's broker: `url` points at this run's vhost."""

    url: str
    vhost: str
    admin: Admin

    def bindings(self, queue: str, exchange: str) -> set[str]:
        """The broker's bindings `exchange` → `queue` (skips the test without admin access)."""
        if not self.admin.available:
            pytest.skip("neither the management API nor rabbitmqctl can list bindings")
        return self.admin.bindings(self.vhost, queue, exchange)


@pytest.fixture(scope="session")
def amqp_broker() -> Iterator[Broker]:
    """The broker for this session, in a vhost of its own when the broker lets us make one."""
    container: Any = None
    given = os.environ.get("GATEWAY_TEST_AMQP_URL")
    url = URL(given or DEFAULT_URL)
    if not _port_open(url.host or "127.0.0.1", url.port or 5672):
        if given:
            _unavailable(f"nothing answers at GATEWAY_TEST_AMQP_URL ({url.host}:{url.port})")
        if not _docker_available():
            _unavailable("nothing listens on 127.0.0.1:5672 and Docker is not available")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # testcontainers warns about its own deprecations
            from testcontainers.community.rabbitmq import RabbitMqContainer

            container = RabbitMqContainer("rabbitmq:3-management").with_exposed_ports(15672)
            container.start()
        host = container.get_container_host_ip()
        url = URL.build(
            scheme="amqp",
            user="guest",
            password="guest",
            host=host,
            port=int(container.get_exposed_port(5672)),
            path="/",
        )
        os.environ.setdefault(
            "GATEWAY_TEST_AMQP_MANAGEMENT_URL",
            f"http://{host}:{container.get_exposed_port(15672)}/api",
        )
    admin = _admin_for(url)
    vhost = urllib.parse.unquote(url.path[1:]) if len(url.path) > 1 else "/"
    created = None
    if admin.available:
        created = f"gateway-test-{uuid.uuid4().hex[:8]}"
        admin.add_vhost(created)
        vhost = created
        url = url.with_path("/" + urllib.parse.quote(created, safe=""), encoded=True)
    try:
        yield Broker(str(url), vhost, admin)
    finally:
        if created is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                admin.delete_vhost(created)
        if container is not None:
            container.stop()


# --- names per test ---------------------------------------------------------------------------


@dataclass
class Names:
    """Exchange and queue names that belong to one test."""

    tag: str
    events: str
    upstream: str
    dlx: str
    dead: str
    created: list[str] = field(default_factory=list)  # instance ids handed out

    @classmethod
    def new(cls) -> Names:
        tag = uuid.uuid4().hex[:10]
        return cls(
            tag=tag,
            events=f"realtime.events.{tag}",
            upstream=f"realtime.upstream.{tag}",
            dlx=f"realtime.dlx.{tag}",
            dead=f"realtime.dead.{tag}",
        )

    def instance(self, label: str = "gw") -> str:
        """A fresh instance id (its queue is `realtime.gateway.<id>`)."""
        ident = f"{label}-{self.tag}-{len(self.created)}"
        self.created.append(ident)
        return ident

    async def delete(self, url: str) -> None:
        """Delete every exchange and queue these names may have created."""
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            # Instance queues are exclusive and auto-delete: they went with their gateway.
            await channel.queue_delete(self.dead)
            for exchange in (self.events, self.upstream, self.dlx):
                await channel.exchange_delete(exchange)


@pytest.fixture
async def amqp_names(amqp_broker: Broker) -> AsyncIterator[Names]:
    """Unique names for this test; their exchanges and queues are deleted afterwards."""
    names = Names.new()
    yield names
    await names.delete(amqp_broker.url)


# --- a plain AMQP client, as a publishing service would use -------------------------------------


class Service:
    """A plain aio-pika client: publishes like a service and reads queues like an operator."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, names: Names) -> None:
        self.connection = connection
        self.names = names
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def channel(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self.connection.channel(publisher_confirms=True)
        return self._channel

    async def publish(
        self,
        routing_key: str,
        body: bytes | Any,
        *,
        exchange: str | None = None,
        content_type: str | None = "application/json",
        message_id: str | None = None,
        **properties: Any,
    ) -> str:
        """Publish one message to the events exchange (bodies that are not bytes: JSON)."""
        channel = await self.channel()
        target = await channel.get_exchange(exchange or self.names.events, ensure=False)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        ident = message_id or uuid.uuid4().hex
        await target.publish(
            aio_pika.Message(raw, content_type=content_type, message_id=ident, **properties),
            routing_key,
        )
        return ident

    async def tap(self, exchange: str, pattern: str = "#") -> aio_pika.abc.AbstractQueue:
        """A private queue bound to `exchange` (e.g. the upstream one), read with `get`."""
        channel = await self.channel()
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, pattern)
        return queue


async def next_message(
    queue: aio_pika.abc.AbstractQueue, within: float = 5.0
) -> aio_pika.abc.AbstractIncomingMessage:
    """The next message of a queue (polled with basic.get), failing after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        if time.monotonic() > deadline:
            raise AssertionError(f"no message on {queue.name} within {within} s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def service(amqp_broker: Broker, amqp_names: Names) -> AsyncIterator[Service]:
    """A plain AMQP client connected to the session's broker."""
    connection = await aio_pika.connect(amqp_broker.url)
    async with connection:
        yield Service(connection, amqp_names)


# --- backbones ----------------------------------------------------------------------------------


BackboneFactory = Callable[..., Awaitable[AmqpBackbone]]


def make_backbone(url: str, names: Names, **kwargs: Any) -> AmqpBackbone:
    """An AmqpBackbone on this test's names (not started)."""
    if "instance_id" not in kwargs:
        kwargs["instance_id"] = names.instance()
    kwargs.setdefault("backoff_max_s", 2.0)
    return AmqpBackbone(
        url,
        exchange=names.events,
        upstream_exchange=names.upstream,
        dead_letter_exchange=names.dlx,
        dead_letter_queue=names.dead,
        **kwargs,
    )


async def until(predicate: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    """Wait for a condition that has no event to wait on, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


# --- a TCP proxy the tests can cut ----------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the broker. `cut()` drops every connection and refuses
    new ones (as a broker outage would look to the gateway) until `restore()`."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0

    def url(self, broker_url: str) -> str:
        """`broker_url` with the host and port of this proxy."""
        return str(URL(broker_url).with_host("127.0.0.1").with_port(self.port))

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, up_writer))
        loop = asyncio.get_running_loop()
        for coro in (self._pipe(reader, up_writer), self._pipe_down(up_reader, writer)):
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe_down(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Broker → client (a subclass may look at the frames)."""
        await self._pipe(source, sink)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._gate()
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)

    async def _gate(self) -> None:
        """Wait here before forwarding (a subclass may hold the traffic)."""

    async def cut(self) -> None:
        """Stop listening and abort every open connection, both ways."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def restore(self) -> None:
        """Listen again on the same port."""
        await self.start()


@pytest.fixture
async def broker_proxy(amqp_broker: Broker) -> AsyncIterator[TcpProxy]:
    """A cuttable TCP proxy in front of the session's broker."""
    url = URL(amqp_broker.url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    yield proxy
    await proxy.cut()


# --- gateways on the broker -----------------------------------------------------------------------


@dataclass
class AmqpGateway:
    """A running gateway on the broker, with its backbone at hand."""

    gateway: Gateway
    backbone: AmqpBackbone

    @property
    def queue(self) -> str:
        return self.backbone.queue_name


AmqpGatewayFactory = Callable[..., Awaitable[AmqpGateway]]


@pytest.fixture
async def start_amqp_gateway(
    amqp_broker: Broker,
    amqp_names: Names,  # before aiohttp_client, so the names outlive the gateways
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> AmqpGatewayFactory:
    """Factory: `await start_amqp_gateway(bindings="dynamic", url=proxy_url, **config)`.

    Each call is one more gateway instance (its own queue) on this test's exchanges.
    """

    async def start(
        *, url: str | None = None, backbone_options: dict[str, Any] | None = None, **overrides: Any
    ) -> AmqpGateway:
        broker_url = url or amqp_broker.url
        instance = overrides.pop("instance_id", None) or amqp_names.instance()
        backbone = make_backbone(
            broker_url, amqp_names, instance_id=instance, **(backbone_options or {})
        )
        config = make_config(
            amqp_url=broker_url,
            exchange=amqp_names.events,
            upstream_exchange=amqp_names.upstream,
            instance_id=instance,
            **overrides,
        )
        app = create_app(config, backbone=backbone)
        backbone.metrics = app[GATEWAY].metrics  # count where /metrics reads
        client = await aiohttp_client(app)
        return AmqpGateway(Gateway(client, app), backbone)

    return start


# --- gateways with recovery on (the notification stream) -----------------------------------------


StartRecovering = Callable[..., Awaitable[AmqpGateway]]


@pytest.fixture
async def stream_name(amqp_broker: Broker, amqp_names: Names) -> AsyncIterator[str]:
    """A notification stream of this test's own, deleted at the end."""
    name = f"realtime.notifications.{amqp_names.tag}"
    yield name
    connection = await aio_pika.connect(amqp_broker.url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


@pytest.fixture
def start_recovering(stream_name: str, start_amqp_gateway: AmqpGatewayFactory) -> StartRecovering:
    """Factory: one more gateway instance with recovery on (this test's stream).

    `stream_name` comes first, so the stream is deleted after the gateways have stopped.
    """

    async def start(
        *, stream_options: dict[str, Any] | None = None, **overrides: Any
    ) -> AmqpGateway:
        options = {
            "recovery_window_s": 600.0,
            "recovery_stream": stream_name,
            "stream_options": stream_options,
            **overrides.pop("backbone_options", {}),
        }
        return await start_amqp_gateway(backbone_options=options, **overrides)

    return start
