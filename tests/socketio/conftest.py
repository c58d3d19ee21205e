"""Fixtures for the Socket.IO tests: socket.io-client v4 installed on demand, Node clients.

The client comes from the npm registry, pinned by package.json and package-lock.json beside
this file, and is installed once into `.cache/node/socketio` (gitignored) with `npm ci`.
Without Node or npm, or when the install fails, the tests are skipped locally and fail in CI
(`CI` set), so a CI run never passes without them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import Gateway
from tests.socketio.driver import NodeClients
from tests.socketio.install import InstallError, install


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"socket.io-client is needed in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def socketio_client_modules() -> Path:
    """The node_modules folder holding the pinned socket.io-client (installed if needed)."""
    try:
        return install()
    except InstallError as exc:
        _unavailable(str(exc))


NodeFactory = Callable[[Gateway], Awaitable[NodeClients]]


@pytest.fixture
async def node_clients(socketio_client_modules: Path) -> AsyncIterator[NodeFactory]:
    """Factory: `await node_clients(gateway)` → a Node process with socket.io-client."""
    started: list[NodeClients] = []

    async def start(gateway: Gateway) -> NodeClients:
        server = gateway.client.server
        clients = await NodeClients.start(
            socketio_client_modules, f"http://{server.host}:{server.port}"
        )
        started.append(clients)
        return clients

    yield start
    for clients in started:
        await clients.stop()
