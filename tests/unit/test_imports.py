"""Module layering: the command line and the supervisor do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_supervisor_does_not_import_the_command_line() -> None:
    # cli.py starts the supervisor (one direction); workers start server.serve_one directly.
    imported = imported_modules(SERVICE / "supervisor.py")
    assert "service.cli" not in imported
    assert "service.server.serve_one" in imported


def test_the_connection_layer_knows_no_transport() -> None:
    # Both socket transports use connection.py and handshake.py; neither may lean on one.
    for module in ("connection.py", "handshake.py"):
        imported = imported_modules(SERVICE / "transports" / module)
        for name in imported:
            root = name.split(".")[0]
            assert root not in {"aiohttp", "socketio", "engineio"}, (module, name)
            assert not name.startswith(("service.transports.ws", "service.transports.socketio"))
