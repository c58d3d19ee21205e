"""The bench's cache: peer servers and the load generator, installed from PyPI and npm.

Nothing here is committed: `BENCH_CACHE` (default ~/.cache/realtime-gateway-bench) holds a
Node project with the load generator's and Node peer's packages, and a virtualenv with the
python-socketio peer. Versions are pinned so runs on different days compare.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NODE_PACKAGES = {
    "ws": "8.23.0",
    "socket.io": "4.8.4",
    "amqplib": "0.10.9",
    "jsonwebtoken": "9.0.3",
}
PY_PEER_PACKAGES = [
    "python-socketio==5.18.1",
    "python-engineio==4.15.1",
    "aiohttp==3.14.5",
    "aio-pika==10.2.1",
    "PyJWT==2.15.1",
    "uvloop==0.23.0",
]


def cache_dir() -> Path:
    """Where installed peers live."""
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache/realtime-gateway-bench"))


def node_dir() -> Path:
    """The Node project holding the load generator's and Node peer's packages."""
    return cache_dir() / "node"


def py_peer_python() -> Path:
    """The python-socketio peer's interpreter."""
    return cache_dir() / "pysio" / "bin" / "python"


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, timeout=600)


def ensure_installed() -> None:
    """Install (once) the Node packages and the python-socketio peer's virtualenv."""
    nd = node_dir()
    nd.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "rg-bench", "private": True, "dependencies": NODE_PACKAGES}
    pkg = nd / "package.json"
    if not pkg.exists() or json.loads(pkg.read_text()).get("dependencies") != NODE_PACKAGES:
        pkg.write_text(json.dumps(manifest, indent=2))
        print("bench: installing Node packages into", nd, file=sys.stderr)
        _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=nd)
    stamp = cache_dir() / "pysio" / "installed.txt"
    if not stamp.exists() or stamp.read_text() != "\n".join(PY_PEER_PACKAGES):
        print("bench: installing the python-socketio peer into", stamp.parent, file=sys.stderr)
        _run([sys.executable, "-m", "venv", "--clear", str(stamp.parent)])
        _run([str(py_peer_python()), "-m", "pip", "install", "-q", *PY_PEER_PACKAGES])
        stamp.write_text("\n".join(PY_PEER_PACKAGES))


def _cmd(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def versions() -> dict[str, str]:
    """Versions of everything measured, for the report."""
    gateway_py = str(REPO / ".venv" / "bin" / "python")
    probe = (
        "import importlib.metadata as m\n"
        "def v(p):\n"
        "    try: return f'{p}={m.version(p)}'\n"
        "    except m.PackageNotFoundError: return ''\n"
        "print(' '.join(filter(None, map(v, ('aiohttp', 'aio-pika', 'aiormq', 'orjson',"
        " 'uvloop', 'python-socketio', 'python-engineio', 'PyJWT')))))"
    )
    found: dict[str, str] = {}
    for name in NODE_PACKAGES:
        meta = node_dir() / "node_modules" / name / "package.json"
        if meta.exists():
            found[f"npm:{name}"] = json.loads(meta.read_text())["version"]
    found["gateway venv"] = _cmd([gateway_py, "-c", probe])
    found["peer venv"] = _cmd([str(py_peer_python()), "-c", probe])
    found["python"] = platform.python_version()
    found["node"] = _cmd(["node", "--version"])
    found["rabbitmq"] = _cmd(["rabbitmqctl", "version"]) if shutil.which("rabbitmqctl") else "?"
    found["kernel"] = platform.release()
    found["cpu"] = _cpu_model()
    found["cores"] = str(os.cpu_count())
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages, recorded with every run."""
    return os.getloadavg()
