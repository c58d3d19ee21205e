"""The `realtime-gateway` command line: token, publish, help."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from service.auth import Authenticator
from tests.conftest import SECRET
from tests.process.gateway_process import GatewayProcess
from tests.process.logged_process import run_cli

pytestmark = pytest.mark.slow


def test_token_prints_a_jwt_the_gateway_accepts() -> None:
    env = GatewayProcess().env
    result = run_cli(
        "token",
        "--sub",
        "42",
        "--ttl",
        "60",
        "--scope",
        "dashboard:publish",
        "--topics",
        "a,b",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    principal = Authenticator(secret=SECRET).verify(result.stdout.strip())
    assert principal.sub == "42"
    assert principal.scopes == frozenset({"dashboard:publish"})
    assert principal.topics == frozenset({"a", "b"})


def test_token_without_a_secret_exits_2() -> None:
    env = {k: v for k, v in GatewayProcess().env.items() if k != "GATEWAY_JWT_SECRET"}
    env["GATEWAY_NAMESPACES"] = "dashboard"
    env["GATEWAY_PUBLIC_NAMESPACES"] = "dashboard"
    result = run_cli("token", "--sub", "42", env=env)
    assert result.returncode == 2
    assert "GATEWAY_JWT_SECRET" in result.stderr


def test_help_lists_every_option() -> None:
    result = run_cli("--help", env=GatewayProcess().env)
    assert result.returncode == 0
    for flag in ("--max-message-bytes", "--rate-limit", "--jwks-file", "--drain-seconds"):
        assert flag in result.stdout


async def test_publish_through_a_running_embedded_gateway() -> None:
    async with (
        GatewayProcess(env={"GATEWAY_API_KEYS": "cli-key"}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        token = Authenticator(secret=SECRET).mint("42")
        ws = await http.ws_connect(
            f"{gateway.base}/ws/notifications", headers={"Authorization": f"Bearer {token}"}
        )
        result = await asyncio.to_thread(
            run_cli,
            "publish",
            "notification.user.42",
            '{"title": "from the cli"}',
            env=gateway.env | {"GATEWAY_API_KEYS": "cli-key"},
        )
        assert result.returncode == 0, result.stderr
        frame = await ws.receive_json(timeout=5)
        assert frame["data"] == {"title": "from the cli"}
        assert frame["id"] == result.stdout.strip()
        await ws.close()


async def test_serve_warns_about_each_unknown_variable_naming_the_closest_option() -> None:
    env = {"GATEWAY_JWT_SECRETT": "x" * 40, "GATEWAY_MAX_CONECTIONS": "5", "GATEWAY_ZZZ": "1"}
    async with GatewayProcess(env=env) as gateway:
        gateway.terminate()
        assert await gateway.wait(timeout=15) == 0
        records = [json.loads(line) for line in (await gateway.stderr()).splitlines() if line]
    warnings = {r["variable"]: r for r in records if r.get("event") == "unknown_variable"}
    assert set(warnings) == set(env)
    assert warnings["GATEWAY_JWT_SECRETT"]["closest"] == "GATEWAY_JWT_SECRET"
    assert warnings["GATEWAY_MAX_CONECTIONS"]["closest"] == "GATEWAY_MAX_CONNECTIONS"
    assert warnings["GATEWAY_ZZZ"]["closest"] is None
    assert all(r["level"] == "warning" for r in warnings.values())
    assert "x" * 40 not in json.dumps(list(warnings.values()))  # the value is never logged
