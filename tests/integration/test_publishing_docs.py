"""The publishing examples of docs/publishing.md, run as written against a live gateway."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.broker import AmqpGatewayFactory, Broker, Names
from tests.conftest import mint, receive

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "publishing.md"


def example(name: str) -> str:
    """The ```python block of docs/publishing.md whose first line is `# <name>`."""
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        if block.startswith(f"# {name}\n"):
            return str(block)
    raise AssertionError(f"docs/publishing.md has no example {name}")


def run(code: str, tmp_path: Path, **env: str) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr


async def test_the_aio_pika_example_reaches_the_user(
    start_amqp_gateway: AmqpGatewayFactory,
    amqp_broker: Broker,
    amqp_names: Names,
    tmp_path: Path,
) -> None:
    gw = await start_amqp_gateway()
    ws = await gw.gateway.connect("notifications", user="42")
    await asyncio.to_thread(
        run,
        example("publish_with_aio_pika.py"),
        tmp_path,
        AMQP_URL=amqp_broker.url,
        EXCHANGE=amqp_names.events,
        USER_ID="42",
        MESSAGE_ID="doc-aio-pika",
    )
    frame = await receive(ws)
    assert (frame["event"], frame["id"]) == ("notification_new", "doc-aio-pika")
    assert frame["data"] == {"title": "Invoice paid", "amount": 42}


async def test_the_pika_example_reaches_the_dashboard(
    start_amqp_gateway: AmqpGatewayFactory,
    amqp_broker: Broker,
    amqp_names: Names,
    tmp_path: Path,
) -> None:
    gw = await start_amqp_gateway()
    ws = await gw.gateway.connect("dashboard", token=mint("wall", topics=["sales"]))
    await asyncio.to_thread(
        run,
        example("publish_with_pika.py"),
        tmp_path,
        AMQP_URL=amqp_broker.url,
        EXCHANGE=amqp_names.events,
        TOPIC="sales",
        MESSAGE_ID="doc-pika",
    )
    frame = await receive(ws)
    assert (frame["event"], frame["topic"], frame["id"]) == (
        "dashboard_update",
        "sales",
        "doc-pika",
    )
    assert frame["data"] == {"total": 1234}
