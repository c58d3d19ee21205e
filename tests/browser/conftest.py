"""Browser tests: Debian's headless Chromium driven by Playwright, the gateway as a subprocess.

Playwright never downloads a browser here: it drives `/usr/bin/chromium` through
`executable_path`, with a fresh profile directory per test. When Chromium is missing the
`chromium` fixture installs it (`scripts/install-browser`, apt as root) and skips with the
reason only when that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import API_KEY, SECRET

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 600.0
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0

# Headless, no sandbox (root in a container), and nothing that talks to the network on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium, installed on first use if missing."""
    pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
    path = _find_chromium()
    if path is None:
        try:
            done = subprocess.run(
                [str(ROOT / "scripts" / "install-browser")],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
            problem = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["failed"]
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = [str(exc)]
        path = _find_chromium()
        if path is None:
            pytest.skip(f"Chromium is not installed and could not be installed: {problem[0]}")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """`python -m service serve` as a real subprocess, restartable on the same port.

    `start()` returns once the process logged `listening`; its log lines are kept in
    `lines` (and shown when it fails to start).
    """

    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.env = env
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the gateway and wait until it listens."""
        self._listening = asyncio.Event()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "serve",
            cwd=ROOT,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read(self.proc))
        listening = asyncio.ensure_future(self._listening.wait())
        exited = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait(
            {listening, exited}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in (listening, exited):
            waiter.cancel()
        if listening not in done:
            tail = "\n".join(self.lines[-20:])
            await self.kill()
            raise AssertionError(f"the gateway did not start within {START_TIMEOUT_S} s:\n{tail}")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if '"event":"listening"' in line:
                self._listening.set()

    async def kill(self) -> None:
        """SIGKILL: a crash, sockets cut without a close frame."""
        await self._end(kill=True)

    async def stop(self) -> None:
        """SIGTERM (drain), then SIGKILL if it does not exit in time."""
        await self._end(kill=False)

    async def _end(self, *, kill: bool) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill() if kill else proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await self._reader


def gateway_env(port: int) -> dict[str, str]:
    """The process environment minus any GATEWAY_* setting, plus a demo configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.pop("PYTHONASYNCIODEBUG", None)  # the gateway runs as it would in production
    env.update(
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(port),
        GATEWAY_JWT_SECRET=SECRET,
        GATEWAY_API_KEYS=API_KEY,
        GATEWAY_ALLOWED_ORIGINS=f"http://127.0.0.1:{port}",
        GATEWAY_DEMO="1",
        GATEWAY_DRAIN_SECONDS="0.5",
        GATEWAY_LOG_FORMAT="json",
        GATEWAY_INSTANCE_ID=f"browser-test-{port}",
    )
    return env


@pytest.fixture
async def demo_gateway() -> AsyncIterator[GatewayProcess]:
    """A demo-mode gateway subprocess on a free port (stopped after the test)."""
    port = free_port()
    gateway = GatewayProcess(port, gateway_env(port))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()
