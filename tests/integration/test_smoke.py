"""The shortest path through the gateway: connect, publish, receive."""

from __future__ import annotations

from tests.conftest import Gateway, receive


async def test_notification_reaches_its_user(gateway: Gateway) -> None:
    ws = await gateway.connect("notifications", user="42")
    ident = await gateway.publish("notification.user.42", {"title": "hi"})
    frame = await receive(ws)
    assert frame["event"] == "notification_new"
    assert frame["data"] == {"title": "hi"}
    assert frame["id"] == ident
    assert isinstance(frame["ts"], int)
    await ws.close()
