"""service.lastvalue: the bounded last-frame-per-topic cache behind dashboard_refresh."""

from __future__ import annotations

from service.lastvalue import LastValueCache


def test_empty() -> None:
    cache = LastValueCache()
    assert len(cache) == 0
    assert cache.get("sales") is None
    assert list(cache.topics()) == []


def test_keeps_the_latest_frame_per_topic() -> None:
    cache = LastValueCache()
    cache.put("sales", b"1")
    cache.put("ops", b"a")
    cache.put("sales", b"2")
    assert cache.get("sales") == b"2"
    assert cache.get("ops") == b"a"
    assert len(cache) == 2
    assert sorted(cache.topics()) == ["ops", "sales"]


def test_returns_the_same_bytes_object() -> None:
    cache = LastValueCache()
    frame = b'{"event":"dashboard_update"}'
    cache.put("t", frame)
    assert cache.get("t") is frame


def test_bounded_drops_the_least_recently_updated_topic() -> None:
    cache = LastValueCache(max_topics=2)
    cache.put("a", b"1")
    cache.put("b", b"1")
    cache.put("a", b"2")  # `a` is now the most recently updated
    cache.put("c", b"1")
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") == b"2"
    assert cache.get("c") == b"1"
    assert list(cache.topics()) == ["a", "c"]


def test_reading_does_not_refresh_a_topic() -> None:
    cache = LastValueCache(max_topics=2)
    cache.put("a", b"1")
    cache.put("b", b"1")
    assert cache.get("a") == b"1"
    cache.put("c", b"1")
    assert cache.get("a") is None  # least recently *updated*, whatever was read
    assert list(cache.topics()) == ["b", "c"]


def test_bound_of_one() -> None:
    cache = LastValueCache(max_topics=1)
    for index in range(5):
        cache.put(f"t{index}", b"x")
    assert list(cache.topics()) == ["t4"]


def test_never_exceeds_the_bound() -> None:
    cache = LastValueCache(max_topics=10)
    for index in range(1000):
        cache.put(f"t{index % 37}", str(index).encode())
        assert len(cache) <= 10
    assert cache.get("t0") == b"999"
    assert cache.get("t36") == b"998"
