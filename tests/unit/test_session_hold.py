"""Session.hold / release: the side list a resuming session's live frames wait in."""

from __future__ import annotations

from service.errors import CloseCode
from service.model import Namespace, Principal
from service.session import Session


def make(limit: int = 100) -> Session:
    return Session(
        principal=Principal(sub="42"), namespace=Namespace.NOTIFICATIONS, send_queue_bytes=limit
    )


async def test_held_frames_are_not_sent_and_come_back_in_order() -> None:
    session = make()
    assert session.push(b"before")
    session.hold()
    assert session.held
    assert session.push(b"one")
    assert session.push(b"two")
    assert await session.next_batch() == [b"before"]
    assert session.pending_bytes == len(b"one") + len(b"two")
    assert session.release() == [b"one", b"two"]
    assert not session.held
    assert session.pending_bytes == 0
    assert session.push(b"after")
    assert await session.next_batch() == [b"after"]


async def test_held_frames_count_against_the_outbound_budget() -> None:
    session = make(limit=10)
    session.hold()
    assert session.push(b"x" * 6)
    assert not session.push(b"y" * 6)
    assert session.close_code == CloseCode.SLOW_CONSUMER
    assert session.release() == []


def test_hold_is_idempotent_and_release_without_hold_is_empty() -> None:
    session = make()
    assert session.release() == []
    session.hold()
    session.push(b"a")
    session.hold()
    assert session.release() == [b"a"]
