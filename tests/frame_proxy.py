"""A TCP proxy in front of the broker that understands AMQP frames on the way down.

Besides what `TcpProxy` does (cut, restore), it can `freeze()` a live link (nothing passes
either way, the sockets stay open: a broker that hangs, or a network that silently drops) and
`inject()` a frame into what the broker sends, between two whole frames (a `connection.blocked`
as a broker under a resource alarm sends it).
"""

from __future__ import annotations

import asyncio

import pamqp.frame
from pamqp.base import Frame

from tests.broker import TcpProxy


class FrameProxy(TcpProxy):
    """`TcpProxy` with `freeze()`/`thaw()` and `inject()` (broker → client direction)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._downstream: list[asyncio.StreamWriter] = []

    def freeze(self) -> None:
        """Stop forwarding in both directions; connections stay open."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again (what waited is forwarded then)."""
        self._flowing.set()

    def inject(self, frame: Frame, channel: int = 0) -> None:
        """Send `frame` to every client now (frames from the broker are written whole, so it
        lands between two of them)."""
        data = pamqp.frame.marshal(frame, channel)
        for writer in self._downstream:
            writer.write(data)

    async def _gate(self) -> None:
        await self._flowing.wait()

    async def _pipe_down(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Broker → client, whole frames at a time, so an injected frame never splits one."""
        self._downstream.append(sink)
        try:
            while True:
                head = await source.readexactly(7)
                rest = await source.readexactly(int.from_bytes(head[3:7], "big") + 1)
                await self._gate()
                sink.write(head + rest)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._downstream.remove(sink)
            sink.transport.abort()
            self._writers.discard(sink)
