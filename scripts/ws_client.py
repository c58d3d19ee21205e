"""A minimal WebSocket client: prints every frame received, sends each stdin line as a frame."""

from __future__ import annotations

import asyncio
import sys

import aiohttp


async def main(url: str, token: str | None) -> None:
    """Connect to `url` (with a bearer token) and relay frames until either side closes."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        print(f"connected to {url}; type JSON frames, Ctrl-D to quit", file=sys.stderr)
        loop = asyncio.get_running_loop()

        async def typed() -> None:
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                if line.strip():
                    await ws.send_str(line.strip())
            await ws.close()

        sender = asyncio.create_task(typed())
        async for msg in ws:
            print(msg.data, flush=True)
        sender.cancel()
        print(f"closed: {ws.close_code}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
