"""The gateway as a real process whose JSON log is read while it runs.

Unlike `gateway_process.GatewayProcess`, which reads stderr after exit, this one drains the
log live: a process with hundreds of sockets or several workers logs more than a pipe holds,
and tests of workers and drains wait for given log events (with a timeout) instead of
sleeping. The process gets its own process group, so cleanup also reaches its workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tests.conftest import API_KEY, SECRET

START_TIMEOUT_S = 20.0
Record = dict[str, Any]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`realtime-gateway ARGS` run to its end (30 s at most), output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def base_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without GATEWAY_* noise, plus test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    # Asyncio debug mode (scripts/test sets it for the suite) slows the process under test
    # and would skew timing measurements.
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_JWT_SECRET": SECRET,
            "GATEWAY_API_KEYS": API_KEY,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_LOG_LEVEL": "info",
        }
    )
    env.update(overrides)
    return env


class GatewayProcess:
    """A running `python -m service serve` and the log records it printed so far."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.records: list[Record] = []
        self.raw: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(
        cls,
        env: Mapping[str, str],
        *,
        wait_for: str = "listening",
        count: int = 1,
        argv: Sequence[str] = ("-m", "service", "serve"),
    ) -> GatewayProcess:
        """Start the gateway and wait until `count` records named `wait_for` were logged."""
        port = int(env["GATEWAY_PORT"])
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so cleanup reaches its workers
        )
        gateway = cls(proc, port)
        try:
            await gateway.wait_log(lambda r: r.get("event") == wait_for, count, START_TIMEOUT_S)
        except BaseException:
            await gateway.kill()
            raise
        return gateway

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                record = json.loads(text)
                if isinstance(record, dict):
                    self.records.append(record)
            self._changed.set()
        self._changed.set()

    def matching(self, predicate: Callable[[Record], bool]) -> list[Record]:
        """The records logged so far that satisfy `predicate`."""
        return [r for r in self.records if predicate(r)]

    async def wait_log(
        self, predicate: Callable[[Record], bool], count: int = 1, within: float = 10.0
    ) -> list[Record]:
        """Wait until `count` records satisfy `predicate`; fail after `within` seconds."""
        try:
            async with asyncio.timeout(within):
                while len(found := self.matching(predicate)) < count:
                    if self._reader.done():
                        raise AssertionError("the gateway exited")
                    self._changed.clear()
                    await self._changed.wait()
        except (TimeoutError, AssertionError):
            tail = "\n".join(self.raw[-30:])
            raise AssertionError(
                f"expected {count} matching log records within {within}s; log tail:\n{tail}"
            ) from None
        return found

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send a signal to the process."""
        self.proc.send_signal(sig)

    async def wait(self, within: float) -> int:
        """The exit status, failing if the process is still running after `within` seconds."""
        code = await asyncio.wait_for(self.proc.wait(), within)
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        return code

    async def kill(self) -> None:
        """Stop the process and any worker it started, at once (cleanup)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test created
        if self.proc.returncode is None:
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
