#!/usr/bin/env python3
"""Measure how fast one gateway instance follows and replays the notification stream.

    .venv/bin/python scripts/stream_rate.py [--count 20000] [--amqp-url URL]

1. Starts a RabbitMQ backbone with recovery on (exchange and stream names of this run), with a
   counting `on_event` (no sockets: this is the backbone's own cost).
2. Publishes `--count` notifications to the exchange as fast as it can (no confirms), from
   another connection, and measures how long the instance takes to deliver the last one.
3. Starts a second backbone (empty memory, as after a restart) and replays everything from
   offset 0 (the stream read rate of one reader).

Bounded: `--count` messages, 120 s at most, the run's exchanges and stream deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.backbone.amqp import AmqpBackbone
from service.log import configure_logging
from service.model import Event


async def run(args: argparse.Namespace) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    names = {
        "exchange": f"rate.events.{tag}",
        "upstream_exchange": f"rate.upstream.{tag}",
        "dead_letter_exchange": f"rate.dlx.{tag}",
        "dead_letter_queue": f"rate.dead.{tag}",
        "recovery_stream": f"rate.notifications.{tag}",
    }
    delivered = 0
    done = asyncio.Event()

    def on_event(event: Event) -> None:
        nonlocal delivered
        delivered += 1
        if delivered >= args.count:
            done.set()

    def backbone(label: str) -> AmqpBackbone:
        return AmqpBackbone(
            args.amqp_url, instance_id=f"rate-{label}-{tag}", recovery_window_s=600, **names
        )

    live = backbone("live")
    report: dict[str, float] = {"count": args.count}
    connection = await aio_pika.connect(args.amqp_url)
    try:
        async with asyncio.timeout(120):
            await live.start(on_event)
            # No publisher confirms: the publisher must outrun the instance being measured.
            channel = await connection.channel(publisher_confirms=False)
            exchange = await channel.get_exchange(names["exchange"])
            body = json.dumps({"data": {"title": "x" * 100}}).encode()
            started = time.perf_counter()
            for first in range(0, args.count, 1000):
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(body, content_type="application/json"),
                            f"notification.user.u{n % 100}",
                        )
                        for n in range(first, min(first + 1000, args.count))
                    )
                )
            published = time.perf_counter() - started
            await done.wait()
            followed = time.perf_counter() - started
            report["publish_s"] = round(published, 2)
            report["follow_s"] = round(followed, 2)
            report["live_per_s"] = round(args.count / followed)

            fresh = backbone("fresh")
            await fresh.start(lambda event: None)
            assert fresh.history is not None
            assert live.history is not None
            last = live.history.last_offset
            replayed = 0

            def count(event: Event) -> None:
                nonlocal replayed
                replayed += 1

            started = time.perf_counter()
            floor = await fresh.history.replay(0, last, count)
            read = time.perf_counter() - started
            report["replayed"] = replayed
            report["replay_floor"] = floor
            report["replay_s"] = round(read, 2)
            report["replay_per_s"] = round(replayed / read)
            started = time.perf_counter()
            await fresh.history.replay(0, last, count)
            report["replay_again_from_memory_s"] = round(time.perf_counter() - started, 3)
            await fresh.close()
    finally:
        await live.close()
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(names["recovery_stream"])
            await channel.queue_delete(names["dead_letter_queue"])
            for exchange_name in ("exchange", "upstream_exchange", "dead_letter_exchange"):
                await channel.exchange_delete(names[exchange_name])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    configure_logging("warning", "console")
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
