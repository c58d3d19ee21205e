"""Run the gateway as a real subprocess (`python -m service serve`) for process-level tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import SECRET
from tests.process.logged_process import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0


class GatewayProcess:
    """A gateway subprocess on 127.0.0.1:<port>; use `async with`."""

    def __init__(self, *args: str, port: int | None = None, env: dict[str, str] | None = None):
        self.port = port or free_port()
        self.args = args
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
            "GATEWAY_JWT_SECRET": SECRET,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_LOG_FORMAT": "json",
            "PYTHONASYNCIODEBUG": "0",
            **(env or {}),
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def args_for(self, *args: str) -> list[str]:
        """The command line of `python -m service serve ARGS`."""
        return [sys.executable, "-m", "service", "serve", *args]

    async def __aenter__(self) -> GatewayProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args_for(*self.args),
            cwd=REPO,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await self.wait_healthy()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def wait_healthy(self) -> None:
        """Poll /healthz until it answers (bounded by START_TIMEOUT_S)."""
        assert self.proc is not None
        async with asyncio.timeout(START_TIMEOUT_S), aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    err = await self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(f"gateway exited {self.proc.returncode}: {err!r}")
                try:
                    async with http.get(f"{self.base}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)

    def terminate(self) -> None:
        """Send SIGTERM."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        """The exit status, failing after `timeout` seconds."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def stderr(self) -> str:
        """Everything the process wrote to stderr (after it exited)."""
        assert self.proc is not None
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")
