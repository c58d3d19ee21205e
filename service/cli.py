"""The `realtime-gateway` command: `serve` (default), `token` and `publish`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from service import __version__, codec
from service import config as config_module
from service.config import Config
from service.errors import BackboneUnavailable, ConfigError, ProtocolError
from service.log import configure_logging

log = structlog.get_logger("service.cli")
COMMANDS = ("serve", "token", "publish")
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every GATEWAY_* option is a flag of every command."""
    options = argparse.ArgumentParser(add_help=False)
    config_module.add_arguments(options)
    parser = argparse.ArgumentParser(
        prog="realtime-gateway",
        description="WebSocket gateway fed by RabbitMQ. Every option is also a GATEWAY_* "
        "environment variable; a flag wins over its variable.",
        parents=[options],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{serve,token,publish}")
    commands.add_parser("serve", parents=[options], help="run the gateway (default)")
    token = commands.add_parser(
        "token", parents=[options], help="print a dev JWT signed with GATEWAY_JWT_SECRET"
    )
    token.add_argument("--sub", required=True, help="user id (the token's sub)")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    token.add_argument(
        "--scope", default="", help='space-separated scopes, e.g. "dashboard:publish"'
    )
    token.add_argument("--topics", default=None, help="comma list of allowed dashboard topics")
    publish = commands.add_parser(
        "publish", parents=[options], help="publish one event downstream and print its id"
    )
    publish.add_argument(
        "routing_key", help="dashboard.<topic>, notification.user.<id> or notification.broadcast"
    )
    publish.add_argument("data", help="the event's data, as JSON")
    publish.add_argument("--event", default=None, help="event name (default from the key)")
    publish.add_argument("--id", default=None, help="message id (default: a new uuid)")
    publish.add_argument(
        "--url",
        default=None,
        help="with the embedded backbone: the running gateway to publish through "
        "(default http://127.0.0.1:<port>; needs GATEWAY_API_KEYS)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(arg in COMMANDS for arg in args if not arg.startswith("-")):
        args = ["serve", *args] if "-h" not in args and "--help" not in args else args
    parser = build_parser()
    ns = parser.parse_args(args)
    try:
        config = config_module.load(os.environ, config_module.from_namespace(ns))
        if ns.command == "token":
            return _token(config, ns)
        if ns.command == "publish":
            return _publish(config, ns)
        return serve(config)
    except ConfigError as exc:
        print(f"realtime-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _token(config: Config, ns: argparse.Namespace) -> int:
    from service.auth import Authenticator

    if not config.jwt_secret:
        raise ConfigError("GATEWAY_JWT_SECRET", "required to mint a token")
    auth = Authenticator(
        secret=config.jwt_secret, audience=config.jwt_audience, issuer=config.jwt_issuer
    )
    topics = None if ns.topics is None else [t for t in ns.topics.split(",") if t.strip()]
    try:
        token = auth.mint(ns.sub, ttl_s=ns.ttl, scopes=ns.scope.split(), topics=topics)
    except ValueError as exc:
        print(f"realtime-gateway token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(token)
    return 0


def _publish(config: Config, ns: argparse.Namespace) -> int:
    try:
        data = codec.loads(ns.data)
    except ValueError:
        print("realtime-gateway publish: DATA_JSON is not valid JSON", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if config.amqp_url:
            from service.backbone.amqp import publish_once

            ident = asyncio.run(
                publish_once(config, ns.routing_key, data, event=ns.event, message_id=ns.id)
            )
        else:
            ident = _publish_http(config, ns.url, ns.routing_key, data, ns.event, ns.id)
    except (ProtocolError, BackboneUnavailable, OSError) as exc:
        print(f"realtime-gateway publish: {exc}", file=sys.stderr)
        return 1
    print(ident)
    return 0


def _publish_http(
    config: Config,
    url: str | None,
    routing_key: str,
    data: Any,
    event: str | None,
    ident: str | None,
) -> str:
    """With the embedded backbone the events live in the gateway process: go through its API."""
    if not config.api_keys:
        raise ConfigError(
            "GATEWAY_API_KEYS",
            "publishing with the embedded backbone goes through the running gateway's "
            "/api/publish, which needs an API key (or set GATEWAY_AMQP_URL)",
        )
    base = url or f"http://127.0.0.1:{config.port}"
    body: dict[str, Any] = {"routing_key": routing_key, "data": data}
    if event:
        body["event"] = event
    if ident:
        body["id"] = ident
    request = urllib.request.Request(
        f"{base.rstrip('/')}/api/publish",
        data=codec.dumps(body),
        headers={
            "Authorization": f"Bearer {config.api_keys[0]}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(codec.loads(response.read())["id"])
    except urllib.error.HTTPError as exc:
        raise OSError(f"{exc.code}: {exc.read().decode(errors='replace')}") from None


def serve(config: Config) -> int:
    """Run the gateway until SIGTERM/SIGINT; drains, then returns 0.

    With GATEWAY_WORKERS > 1 this process becomes the supervisor of that many workers.
    """
    configure_logging(config.log_level, config.log_format)
    warn_unknown_variables(os.environ)
    if config.workers > 1:
        if not config.amqp_url:
            raise ConfigError(
                "GATEWAY_WORKERS",
                "more than one worker needs GATEWAY_AMQP_URL: with the embedded backbone "
                "each worker would only see the events published through itself",
            )
        from service.supervisor import Supervisor

        return Supervisor(config).run()
    from service.server import serve_one

    return serve_one(config)


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """One warning per GATEWAY_* variable that is no option, naming the closest known one."""
    for name in config_module.unknown_variables(environ):
        log.warning(
            "unknown_variable",
            variable=name,
            closest=config_module.closest_option(name),
            note="ignored: not a gateway option (see realtime-gateway --help)",
        )
