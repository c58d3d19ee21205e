"""The demo page and its dev-only token endpoint, mounted only with `GATEWAY_DEMO=1`.

- `GET /demo/` serves the page (`service/static/demo.html`), `GET /demo/<file>` the other
  files shipped in `service/static/` (the page's script and style, and `realtime.js`, the
  JavaScript client). Only files that exist there at start-up are served: no path from the
  request ever reaches the file system.
- `GET /demo/token?sub=42&ttl=900` mints an HS256 token with the configured secret for any
  user: it exists for local demos only, which is why demo mode is off unless asked for, and
  it answers only loopback peers that no proxy forwarded (403 otherwise).
- `GET /demo/info` tells the page the demo user and the topics the producer publishes.

The page is same-origin with the WebSocket endpoints, so `GATEWAY_ALLOWED_ORIGINS` must
list the origin it is opened from (`scripts/run` does).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from service.routing import id_problem
from service.tasks import cancel_and_wait
from service.transports.context import GATEWAY, error_response

if TYPE_CHECKING:
    from service.demo_producer import DemoProducer

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
INDEX = "demo.html"
TOKEN_TTL_S = 900.0
TOKEN_TTL_MIN_S = 5.0
TOKEN_TTL_MAX_S = 86400.0
DEMO_TOPICS = web.AppKey("demo_topics", list[str])
DEMO_USER = web.AppKey("demo_user", str)

# The page talks only to its own origin: scripts, styles and sockets from here, nothing inline.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
NO_STORE = {"Cache-Control": "no-store"}
#: A request with one of these came through a proxy: its peer address says nothing.
FORWARDED_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def static_files(directory: Path = STATIC_DIR) -> dict[str, Path]:
    """The servable files: regular files directly in `directory`, by name."""
    if not directory.is_dir():
        return {}
    return {p.name: p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")}


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/demo/")


def _file_handler(files: dict[str, Path]) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or INDEX
        path = files.get(name)
        if path is None:
            return error_response(404, "not_found", f"no demo file {name!r}")
        return web.FileResponse(path, headers=PAGE_HEADERS)

    return serve


def is_local(request: web.Request) -> bool:
    """Whether the peer is this machine (loopback) and no proxy forwarded the request."""
    if any(name in request.headers for name in FORWARDED_HEADERS):
        return False
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:  # no address (a Unix socket) or an unparsable one
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return peer.is_loopback


async def token(request: web.Request) -> web.Response:
    """200 `{"token", "sub", "exp", "expires_in"}`; 403 for a peer that is not loopback; 400
    for a bad sub or ttl; 404 without a JWT secret (public keys only cannot mint)."""
    if not is_local(request):
        return error_response(403, "forbidden", "demo tokens are minted for loopback clients only")
    gateway = request.app[GATEWAY]
    if not gateway.config.jwt_secret:
        return error_response(404, "not_found", "minting demo tokens needs GATEWAY_JWT_SECRET")
    sub = request.query.get("sub", request.app[DEMO_USER])
    if problem := id_problem(sub):
        return error_response(400, "bad_request", f"sub {problem}")
    try:
        ttl = float(request.query.get("ttl", TOKEN_TTL_S))
    except ValueError:
        ttl = math.nan
    if not (TOKEN_TTL_MIN_S <= ttl <= TOKEN_TTL_MAX_S):
        return error_response(
            400,
            "bad_request",
            f"ttl must be a number of seconds from {TOKEN_TTL_MIN_S:g} to {TOKEN_TTL_MAX_S:g}",
        )
    jwt = gateway.auth.mint(sub, ttl_s=ttl)
    exp = gateway.auth.verify(jwt).exp
    return web.json_response(
        {"token": jwt, "sub": sub, "exp": exp, "expires_in": ttl}, headers=NO_STORE
    )


async def info(request: web.Request) -> web.Response:
    """The demo user and the dashboard topics the synthetic producer publishes."""
    return web.json_response(
        {"user": request.app[DEMO_USER], "topics": request.app[DEMO_TOPICS]}, headers=NO_STORE
    )


def setup(app: web.Application, producer: DemoProducer) -> None:
    """Mount the demo routes and run `producer` for the life of the app.

    `/demo`, `/demo/`, `/demo/token`, `/demo/info` and `/demo/<file>`. The producer starts
    after the node (cleanup contexts run in order) and stops before it closes.
    """
    app[DEMO_USER] = producer.user
    app[DEMO_TOPICS] = producer.topics
    files = static_files()
    serve = _file_handler(files)
    app.router.add_get("/demo", _redirect)
    app.router.add_get("/demo/", serve)
    app.router.add_get("/demo/token", token)
    app.router.add_get("/demo/info", info)
    app.router.add_get("/demo/{name}", serve)

    async def run_producer(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(producer.run(), name="demo-producer")
        yield
        await cancel_and_wait(task)

    app.cleanup_ctx.append(run_producer)
    log.warning(
        "demo_mode_on",
        page="/demo/",
        files=len(files),
        note="GET /demo/token mints a token for any user: never enable demo mode in production",
    )
