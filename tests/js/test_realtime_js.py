"""Runs the JavaScript client's unit tests (tests/js/*.test.mjs) with node's test runner."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NODE_TIMEOUT_S = 30  # below pytest's 60 s, so a hang reports node's output


def test_realtime_js_unit_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the browser test still covers realtime.js)")
    done = subprocess.run(
        [node, "--test", "--test-timeout=10000", str(HERE)],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )
    failures = [line for line in done.stdout.splitlines() if line.startswith("not ok")]
    assert done.returncode == 0, "\n".join(failures) + "\n" + done.stdout[-4000:] + done.stderr
    assert "# fail 0" in done.stdout
