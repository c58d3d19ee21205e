"""Fixtures for the Socket.IO tests: socket.io-client v4 installed on demand, Node clients.

The client comes from the npm registry, pinned by package.json and package-lock.json beside
this file, and is installed once into `.cache/node/socketio` (gitignored) with `npm ci`.
Without Node or npm, or when the install fails, the tests are skipped locally and fail in CI
(`CI` set), so a CI run never passes without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import Gateway
from tests.socketio.driver import NodeClients

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
INSTALL_DIR = ROOT / ".cache" / "node" / "socketio"
NPM_TIMEOUT_S = 300


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"socket.io-client is needed in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _installed_version() -> str | None:
    manifest = INSTALL_DIR / "node_modules" / "socket.io-client" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def socketio_client_modules() -> Path:
    """The node_modules folder holding the pinned socket.io-client (installed if needed)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are not on PATH")
    wanted = json.loads((HERE / "package.json").read_text())["dependencies"]["socket.io-client"]
    lock = (HERE / "package-lock.json").read_bytes()
    stamp = INSTALL_DIR / "package-lock.json"
    if _installed_version() != wanted or not stamp.exists() or stamp.read_bytes() != lock:
        INSTALL_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "package.json", INSTALL_DIR / "package.json")
        shutil.copyfile(HERE / "package-lock.json", stamp)
        try:
            done = subprocess.run(
                [str(npm), "ci", "--no-audit", "--no-fund", "--prefix", str(INSTALL_DIR)],
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _unavailable(f"npm ci did not finish within {NPM_TIMEOUT_S}s")
        if done.returncode != 0 or _installed_version() != wanted:
            _unavailable(f"npm ci failed ({done.returncode}): {done.stderr[-2000:]}")
    return INSTALL_DIR / "node_modules"


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
