"""deploy/: the Dockerfile (hadolint + its key properties), the health check script against a
real gateway, docker-compose and the proxy configuration."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import yaml

from service.config import OPTIONS_BY_ENV
from tests.conftest import GatewayFactory
from tests.ops.util import REPO, tool

DOCKERFILE = REPO / "deploy/Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def test_hadolint_passes() -> None:
    out = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install gcc\nUSER root\n")
    out = subprocess.run(
        [tool("hadolint"), str(bad)], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode != 0


def test_dockerfile_key_properties() -> None:
    all_stages = stages(DOCKERFILE)
    assert len(all_stages) >= 2, "multi-stage build"
    final = all_stages[-1]
    words = [word for word, _ in final]
    base = final[0][1]
    assert "slim" in base or "PYTHON_IMAGE" in base
    assert "slim" in next(rest for word, rest in instructions(DOCKERFILE) if word == "ARG")
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage sets a USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    assert words.index("USER") < words.index("ENTRYPOINT")
    (healthcheck,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert "/opt/healthcheck.py" in healthcheck
    assert [rest for word, rest in final if word == "ENTRYPOINT"] == ['["realtime-gateway"]']
    assert [rest for word, rest in final if word == "CMD"] == ['["serve"]']
    assert ("STOPSIGNAL", "SIGTERM") in final
    # No build tools in the final image: it only copies the virtualenv from the build stage.
    runs = " ".join(rest for word, rest in final if word == "RUN")
    assert not re.search(r"\b(apt-get|apk|pip|gcc|build-essential)\b", runs), runs
    copies = [rest for word, rest in final if word == "COPY"]
    assert any(c.startswith("--from=build /opt/venv") for c in copies)


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "allowlist: everything else stays out of the context"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in instructions(DOCKERFILE):
        if word == "COPY" and not rest.startswith("--from"):
            sources = rest.split()[:-1]
            for source in sources:
                assert source.rstrip("/") in allowed, f"{source} is not in the build context"


def _healthcheck(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "deploy/healthcheck.py")],
        env={"HEALTHCHECK_URL": url},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


async def test_healthcheck_script_against_a_real_gateway(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway()
    url = str(gateway.client.make_url("/healthz"))
    ok = await asyncio.to_thread(_healthcheck, url)
    assert ok.returncode == 0, ok.stderr
    missing = await asyncio.to_thread(_healthcheck, str(gateway.client.make_url("/nope")))
    assert missing.returncode == 1


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    from tests.process.logged_process import free_port

    out = _healthcheck(f"http://127.0.0.1:{free_port()}/healthz")
    assert out.returncode == 1
    assert "healthcheck:" in out.stderr


def test_compose_runs_rabbitmq_and_two_replicas_behind_a_proxy() -> None:
    compose = yaml.safe_load((REPO / "deploy/docker-compose.yml").read_text())
    services = compose["services"]
    assert "management" in services["rabbitmq"]["image"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway-")}
    assert len(gateways) == 2
    instance_ids = set()
    for service in gateways.values():
        env = service["environment"]
        assert set(env) <= set(OPTIONS_BY_ENV), set(env) - set(OPTIONS_BY_ENV)
        assert env["GATEWAY_AMQP_URL"].startswith("amqp://")
        assert "@rabbitmq:5672" in env["GATEWAY_AMQP_URL"]
        assert ":?" in env["GATEWAY_JWT_SECRET"], "no default secret: the user must set one"
        instance_ids.add(env["GATEWAY_INSTANCE_ID"])
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["read_only"] is True
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert grace > float(env["GATEWAY_DRAIN_SECONDS"]) + 3
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert len(instance_ids) == 2
    proxy = services["proxy"]
    assert set(proxy["depends_on"]) == set(gateways)
    assert any("nginx.conf" in volume for volume in proxy["volumes"])


def test_proxy_passes_websocket_upgrades_to_both_replicas() -> None:
    conf = (REPO / "deploy/nginx.conf").read_text()
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert "proxy_http_version 1.1;" in conf
    timeout = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert timeout
    assert int(timeout.group(1)) > 25 * 1.5  # above heartbeat + pong timeout
    for upstream in re.findall(r"upstream \w+ \{(.*?)\}", conf, re.S):
        assert re.findall(r"server (gateway-\d):8080", upstream) == ["gateway-1", "gateway-2"]
    socketio = re.search(r"upstream gateway_socketio \{(.*?)\}", conf, re.S)
    assert socketio
    assert "ip_hash;" in socketio.group(1)
    assert "$request_uri" not in conf.split("log_format", 1)[1].split(";", 1)[0]
    assert conf.count("{") == conf.count("}")
