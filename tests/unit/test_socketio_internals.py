"""The private corners of python-socketio / python-engineio the gateway relies on.

One test per internal listed in `service/transports/socketio_internals.py`: when an upgrade
changes one, its test fails with a message that names it. (What the gateway builds on them is
tested end to end in tests/socketio.) setup.cfg allows only the minor versions these passed on.
"""

from __future__ import annotations

import asyncio
import configparser
import inspect
from importlib import metadata
from pathlib import Path
from typing import Any

import engineio
import pytest
import socketio
from engineio import async_socket
from engineio.async_drivers import aiohttp as engineio_aiohttp
from packaging.requirements import Requirement
from socketio import packet as sio_packet

from service.transports import socketio_internals as internals

REVIEW = "review service/transports/socketio_internals.py before allowing this version"
SETUP_CFG = Path(__file__).parents[2] / "setup.cfg"


def _params(function: Any) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


@pytest.mark.parametrize(
    ("hook", "params"),
    [
        ("_handle_eio_connect", ["eio_sid", "environ"]),
        ("_handle_connect", ["eio_sid", "namespace", "data"]),
        ("_handle_event_internal", ["server", "sid", "eio_sid", "data", "namespace", "id"]),
        ("_handle_eio_message", ["eio_sid", "data"]),
    ],
)
def test_the_server_hooks_keep_their_signatures(hook: str, params: list[str]) -> None:
    method = getattr(socketio.AsyncServer, hook, None)
    assert method is not None, f"python-socketio has no AsyncServer.{hook} any more: {REVIEW}"
    assert inspect.iscoroutinefunction(method), f"AsyncServer.{hook} is no coroutine: {REVIEW}"
    assert _params(method) == params, f"AsyncServer.{hook}{_params(method)} changed: {REVIEW}"


def _server() -> internals.Server:
    async def nothing(*_: Any) -> None:
        return None

    return internals.Server(nothing, lambda _: None, nothing, async_mode="aiohttp")


def test_packets_are_decoded_by_packet_class() -> None:
    sio = _server()
    assert isinstance(getattr(sio, "_binary_packet", None), dict), (
        f"AsyncServer._binary_packet (attachments awaited per Engine.IO sid) is gone: {REVIEW}"
    )
    # (Engine.IO took its own `4` off already.)
    packet = sio.packet_class(encoded_packet='2/notifications,7["read",{"id":"n"}]')
    decoded = (packet.packet_type, packet.namespace, packet.id, packet.data)
    assert decoded == (sio_packet.EVENT, "/notifications", 7, ["read", {"id": "n"}]), (
        f"packet_class decodes differently: {decoded}: {REVIEW}"
    )
    assert sio_packet.packet_names[sio_packet.BINARY_ACK] == "BINARY_ACK", REVIEW
    with pytest.raises(ValueError):  # what _violation counts on for a packet that won't parse
        sio.packet_class(encoded_packet="2/notifications,[not json")


async def test_the_manager_maps_sessions_and_forgets_them_quietly() -> None:
    sio = _server()
    sid = await sio.manager.connect("eio-1", "/notifications")
    assert sio.manager.sid_from_eio_sid("eio-1", "/notifications") == sid, (
        f"manager.sid_from_eio_sid changed: {REVIEW}"
    )
    assert internals.eio_sid_of(sio, sid, "/notifications") == "eio-1", (
        f"manager.eio_sid_from_sid changed: {REVIEW}"
    )
    assert internals.namespace_connected(sio, sid, "/notifications"), (
        f"manager.is_connected changed: {REVIEW}"
    )
    await internals.drop_namespace(sio, sid, "/notifications")
    assert sio.manager.sid_from_eio_sid("eio-1", "/notifications") is None, REVIEW


def test_the_websocket_class_is_replaced_in_a_copy_of_the_driver_table() -> None:
    sio = _server()
    table = getattr(sio.eio, "_async", None)
    assert isinstance(table, dict), f"engineio AsyncServer._async (driver table) is gone: {REVIEW}"
    assert table.get("websocket") is engineio_aiohttp.WebSocket, (
        f"the aiohttp driver's websocket entry changed: {table.get('websocket')}: {REVIEW}"
    )

    def factory(handler: Any, server: Any) -> Any:
        raise AssertionError("not called here")

    internals.install_websocket(sio, factory)  # type: ignore[arg-type]
    assert sio.eio._async["websocket"] is factory
    assert _server().eio._async["websocket"] is engineio_aiohttp.WebSocket, "shared table changed"


def test_the_aiohttp_websocket_wrapper_keeps_its_shape() -> None:
    cls = engineio_aiohttp.WebSocket
    assert _params(cls.__init__) == ["handler", "server"], f"WebSocket.__init__: {REVIEW}"
    wrapper = cls(handler=print, server=None)
    assert (wrapper.handler, wrapper.server, wrapper._sock) == (print, None, None), (
        f"WebSocket no longer keeps handler, server and _sock: {REVIEW}"
    )
    assert inspect.iscoroutinefunction(cls.send), f"WebSocket.send: {REVIEW}"
    assert inspect.iscoroutinefunction(cls.__call__), f"WebSocket.__call__: {REVIEW}"


def test_the_websocket_writer_sends_each_packets_encoding_through_send() -> None:
    """SwitchPacket relies on it: its encoding reaches WebSocket.send, in queue order."""
    handler = getattr(async_socket.AsyncSocket, "_websocket_handler", None)
    assert handler is not None, f"AsyncSocket._websocket_handler is gone: {REVIEW}"
    source = inspect.getsource(handler)
    assert "await ws.send(pkt.encode())" in source, (
        f"Engine.IO's WebSocket writer no longer sends pkt.encode() through ws.send: {REVIEW}"
    )
    # WebSocket learns the session id from the handler, a method bound to the AsyncSocket.
    handler_of_a_socket = async_socket.AsyncSocket(_eio(), "s")._websocket_handler
    assert getattr(handler_of_a_socket, "__self__", None) is not None, (
        f"AsyncSocket._websocket_handler is no bound method: {REVIEW}"
    )
    assert handler_of_a_socket.__self__.sid == "s", f"AsyncSocket.sid: {REVIEW}"


def _eio() -> Any:
    return engineio.AsyncServer(async_mode="aiohttp")


async def test_engine_sockets_have_a_joinable_queue_and_state_flags() -> None:
    eio = _eio()
    socket = async_socket.AsyncSocket(eio, "sid-1")
    assert isinstance(socket.queue, asyncio.Queue), f"AsyncSocket.queue: {REVIEW}"
    flags = {name: getattr(socket, name, None) for name in ("upgraded", "closing", "closed")}
    assert flags == {"upgraded": False, "closing": False, "closed": False}, (
        f"AsyncSocket state flags changed: {flags}: {REVIEW}"
    )
    assert _params(socket.close) == ["wait", "abort", "reason"], f"AsyncSocket.close: {REVIEW}"
    assert _params(socket.send) == ["pkt"], f"AsyncSocket.send: {REVIEW}"
    assert isinstance(eio.sockets, dict), f"engineio AsyncServer.sockets: {REVIEW}"

    eio.sockets["sid-1"] = socket
    sio = _server()
    sio.eio = eio
    assert internals.open_socket(sio, "sid-1") is socket
    assert internals.engine_sids(sio) == ["sid-1"]
    internals.enqueue(socket, None)
    assert socket.queue.qsize() == 1
    socket.queue.get_nowait()
    socket.queue.task_done()
    await asyncio.wait_for(internals.taken(socket), 1)
    socket.closing = True
    assert internals.open_socket(sio, "sid-1") is None


@pytest.mark.parametrize("package", ["python-socketio", "python-engineio"])
def test_setup_cfg_allows_only_the_tested_minor_version(package: str) -> None:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    lines = parser["options"]["install_requires"].splitlines()
    requirement = next(
        Requirement(line) for line in lines if line.strip().startswith(package + ">")
    )
    installed = metadata.version(package)
    assert requirement.specifier.contains(installed), (
        f"{package} {installed} is outside setup.cfg's {requirement.specifier}: {REVIEW}"
    )
    major, minor = (int(part) for part in installed.split(".")[:2])
    assert not requirement.specifier.contains(f"{major}.{minor + 1}.0"), (
        f"setup.cfg allows {package} {major}.{minor + 1}, which these tests never ran on"
    )
