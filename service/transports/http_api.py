"""`POST /api/publish`: publish one event downstream through the backbone."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from service import codec
from service.auth import bearer_token
from service.errors import BackboneUnavailable, ProtocolError
from service.transports.context import GATEWAY, error_response

MAX_ID = 200


def _key_ok(presented: str | None, keys: tuple[str, ...]) -> bool:
    if presented is None:
        return False
    # Compare with every key, in constant time, so timing tells nothing about which matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    return matched


async def publish(request: web.Request) -> web.Response:
    """202 `{"id": ...}`; 400 bad body; 401 bad key; 404 when no key is configured; 503."""
    gateway = request.app[GATEWAY]
    keys = gateway.config.api_keys
    if not keys:
        return error_response(404, "not_found", "the publish API is disabled (no API keys)")
    if not _key_ok(bearer_token(request.headers.get("Authorization")), keys):
        return error_response(401, "unauthorized", "missing or invalid API key")
    try:
        body: Any = codec.loads(await request.read())
    except ValueError:
        return error_response(400, "bad_request", "body must be JSON")
    if not isinstance(body, dict):
        return error_response(400, "bad_request", "body must be a JSON object")
    routing_key, event, ident = body.get("routing_key"), body.get("event"), body.get("id")
    if not isinstance(routing_key, str):
        return error_response(400, "bad_request", "'routing_key' must be a string")
    if event is not None and not isinstance(event, str):
        return error_response(400, "bad_request", "'event' must be a string")
    if ident is not None and (not isinstance(ident, str) or not ident or len(ident) > MAX_ID):
        return error_response(400, "bad_request", f"'id' must be a string of 1 to {MAX_ID} chars")
    try:
        message_id = await gateway.node.publish(
            routing_key, body.get("data"), event=event, message_id=ident
        )
    except ProtocolError as exc:
        return error_response(400, "bad_request", exc.message)
    except BackboneUnavailable as exc:
        return error_response(503, "unavailable", f"backbone unavailable: {exc}")
    return web.json_response({"id": message_id}, status=202)


def add_routes(app: web.Application) -> None:
    """Mount the publish API."""
    app.router.add_post("/api/publish", publish)
