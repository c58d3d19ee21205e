"""A Python handle on tests/socketio/client.mjs (or original_client.mjs): the real
socket.io-client v4 in Node.

Commands go to the script's stdin and everything the clients see comes back as JSON lines;
`expect()` waits for a matching line with a timeout (no sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

CLIENT_JS = Path(__file__).with_name("client.mjs")
# The original gateway's web app, unchanged (one-parameter handlers; see the script).
ORIGINAL_APP_JS = Path(__file__).with_name("original_client.mjs")
EXPECT_TIMEOUT_S = 10.0

Line = dict[str, Any]


class NodeClients:
    """One Node process holding any number of named socket.io-client sockets."""

    def __init__(self, process: asyncio.subprocess.Process, base_url: str) -> None:
        self._process = process
        self.base_url = base_url
        self._lines: list[Line] = []  # not yet consumed by expect()
        self.seen: list[Line] = []  # every line, in order
        self._arrived = asyncio.Event()
        self._refs = itertools.count(1)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(
        cls, node_modules: Path, base_url: str, script: Path = CLIENT_JS
    ) -> NodeClients:
        """Start the Node process (`script`, client.mjs by default) and wait for it to be ready."""
        process = await asyncio.create_subprocess_exec(
            "node",
            str(script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "SIO_NODE_MODULES": str(node_modules)},
        )
        clients = cls(process, base_url)
        await clients.expect(type="ready")
        return clients

    async def _read(self) -> None:
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            entry = orjson.loads(line)
            self._lines.append(entry)
            self.seen.append(entry)
            self._arrived.set()

    async def send(self, **command: Any) -> None:
        """Write one command to the Node process."""
        assert self._process.stdin is not None
        self._process.stdin.write(orjson.dumps(command) + b"\n")
        await self._process.stdin.drain()

    async def expect(
        self,
        *,
        within: float = EXPECT_TIMEOUT_S,
        where: Callable[[Line], bool] | None = None,
        **fields: Any,
    ) -> Line:
        """The first unconsumed line whose fields match (and `where` accepts); consumes it."""

        def matches(line: Line) -> bool:
            if line.get("type") == "fatal":
                raise AssertionError(f"client.mjs failed: {line['message']}")
            return all(line.get(k) == v for k, v in fields.items()) and (
                where is None or where(line)
            )

        try:
            async with asyncio.timeout(within):
                while True:
                    for index, line in enumerate(self._lines):
                        if matches(line):
                            return self._lines.pop(index)
                    self._arrived.clear()
                    if self._reader.done():
                        raise AssertionError(f"client.mjs exited: {await self._stderr()}")
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"no line matching {fields} within {within}s; unconsumed: {self._lines[-10:]}"
            ) from None

    async def connect(
        self, name: str, namespace: str, *, connected: bool = True, **opts: Any
    ) -> Line:
        """Open socket `name` on `/<namespace>`; returns its connect (or connect_error) line."""
        opts.setdefault("reconnection", False)
        await self.send(op="connect", name=name, url=f"{self.base_url}/{namespace}", opts=opts)
        outcome = await self.expect(
            name=name, where=lambda line: line["type"] in ("connect", "connect_error")
        )
        if connected:
            assert outcome["type"] == "connect", outcome
        return outcome

    async def emit(self, name: str, event: str, *args: Any, ack: bool = False) -> Line | None:
        """Emit an event; with `ack`, wait for the callback and return its line."""
        if not ack:
            await self.send(op="emit", name=name, event=event, args=list(args))
            return None
        ref = next(self._refs)
        await self.send(op="emit", name=name, event=event, args=list(args), ref=ref)
        return await self.expect(name=name, type="ack", ref=ref)

    async def event(self, name: str, event: str, **kwargs: Any) -> Any:
        """The first argument of the next `event` that socket `name` receives (its data)."""
        line = await self.expect(name=name, type="event", event=event, **kwargs)
        return line["args"][0]

    async def event_meta(self, name: str, event: str, **kwargs: Any) -> tuple[Any, Any]:
        """Both arguments of the next `event` that socket `name` receives: (data, metadata)."""
        line = await self.expect(name=name, type="event", event=event, **kwargs)
        assert len(line["args"]) == 2, line
        return line["args"][0], line["args"][1]

    async def close(self, name: str) -> None:
        """Disconnect socket `name`."""
        await self.send(op="close", name=name)
        await self.expect(name=name, type="closed")

    async def _stderr(self) -> str:
        assert self._process.stderr is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                return (await self._process.stderr.read()).decode(errors="replace")[-4000:]
        return ""

    async def stop(self) -> None:
        """Disconnect everything and end the Node process."""
        if self._process.returncode is None:
            with contextlib.suppress(ConnectionError):
                await self.send(op="exit")
            try:
                async with asyncio.timeout(5):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
