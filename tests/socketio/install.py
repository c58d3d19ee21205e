"""Install the pinned socket.io-client v4 from the npm registry into `.cache/node/socketio`.

Used by the Socket.IO tests' fixture (on demand) and by `scripts/install-socketio-client`
(ahead of the run, from `.ci/run`). The version and its dependencies are pinned by
package.json and package-lock.json beside this file; `npm ci` runs only when the installed
copy does not match them. Run as `python -m tests.socketio.install`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
INSTALL_DIR = ROOT / ".cache" / "node" / "socketio"
NPM_TIMEOUT_S = 300


class InstallError(Exception):
    """socket.io-client could not be installed (the message says why)."""


def _installed_version() -> str | None:
    manifest = INSTALL_DIR / "node_modules" / "socket.io-client" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def install() -> Path:
    """The node_modules folder holding the pinned socket.io-client, installed if needed."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        raise InstallError("node and npm are not on PATH")
    wanted = json.loads((HERE / "package.json").read_text())["dependencies"]["socket.io-client"]
    lock = (HERE / "package-lock.json").read_bytes()
    stamp = INSTALL_DIR / "package-lock.json"
    if _installed_version() == wanted and stamp.exists() and stamp.read_bytes() == lock:
        return INSTALL_DIR / "node_modules"
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "package.json", INSTALL_DIR / "package.json")
    shutil.copyfile(HERE / "package-lock.json", stamp)
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(INSTALL_DIR)],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InstallError(f"npm ci did not finish within {NPM_TIMEOUT_S}s") from None
    if done.returncode != 0 or _installed_version() != wanted:
        raise InstallError(f"npm ci failed ({done.returncode}): {done.stderr[-2000:]}")
    return INSTALL_DIR / "node_modules"


def main() -> int:
    try:
        modules = install()
    except InstallError as exc:
        print(f"install-socketio-client: {exc}", file=sys.stderr)
        return 1
    print(f"install-socketio-client: socket.io-client {_installed_version()} in {modules}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
