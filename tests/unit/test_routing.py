"""service.routing: id validation, routing-key parsing and AMQP topic matching."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from service import routing
from service.routing import KeyKind, Route

# -- id validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["42", "alice", "a.b", "a.b.c", "user-1_x", "ünïcödé", "x" * routing.MAX_ID_BYTES, "a:b/c"],
)
def test_valid_ids(value: str) -> None:
    assert routing.id_problem(value) is None
    assert routing.is_valid_id(value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("*", "'*' or '#'"),
        ("#", "'*' or '#'"),
        ("a.#", "'*' or '#'"),
        ("a*b", "'*' or '#'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\nb", "whitespace"),
        ("a\u00a0b", "whitespace"),  # a non-breaking space is whitespace too
        ("a\x00b", "control"),
        ("a\x1fb", "control"),
        ("a\x7fb", "control"),
        (".a", "'.'"),
        ("a.", "'.'"),
        ("a..b", "'..'"),
        (".", "'.'"),
        ("x" * (routing.MAX_ID_BYTES + 1), "bytes"),
        ("é" * (routing.MAX_ID_BYTES // 2 + 1), "bytes"),  # 2 bytes each in UTF-8
    ],
)
def test_invalid_ids(value: str, fragment: str) -> None:
    problem = routing.id_problem(value)
    assert problem is not None
    assert fragment in problem
    assert not routing.is_valid_id(value)


def test_id_limit_counts_utf8_bytes_not_characters() -> None:
    assert routing.is_valid_id("é" * (routing.MAX_ID_BYTES // 2))
    assert not routing.is_valid_id("é" * (routing.MAX_ID_BYTES // 2 + 1))


@pytest.mark.parametrize("value", ["a\ud800b", "\udfff", "x.\ud83d"])
def test_lone_surrogates_are_refused(value: str) -> None:
    """JSON (a JWT `sub` decoded by the json module) can carry "\\ud800": it has no UTF-8
    form, so it could never be sent as an AMQP routing key and would fail a whole bind batch."""
    problem = routing.id_problem(value)
    assert problem is not None
    assert "UTF-8" in problem


def test_longest_keys_fit_amqp_routing_key_limit() -> None:
    longest = "x" * routing.MAX_ID_BYTES
    assert len(routing.user_key(longest).encode()) <= 255
    assert len(routing.topic_key(longest).encode()) <= 255


# -- building and parsing ---------------------------------------------------------------------


def test_build_keys() -> None:
    assert routing.topic_key("sales") == "dashboard.sales"
    assert routing.user_key("42") == "notification.user.42"


@pytest.mark.parametrize(
    ("key", "route"),
    [
        ("notification.broadcast", Route(KeyKind.BROADCAST, "")),
        ("notification.user.42", Route(KeyKind.USER, "42")),
        ("notification.user.a.b", Route(KeyKind.USER, "a.b")),
        ("dashboard.sales", Route(KeyKind.TOPIC, "sales")),
        ("dashboard.eu.sales", Route(KeyKind.TOPIC, "eu.sales")),
    ],
)
def test_parse_contract_keys(key: str, route: Route) -> None:
    assert routing.parse(key) == route


@pytest.mark.parametrize(
    "key",
    [
        "",
        "dashboard",
        "dashboard.",
        "dashboard.#",
        "dashboard.*",
        "dashboard.a..b",
        "dashboard.a b",
        "notification",
        "notification.user",
        "notification.user.",
        "notification.user.#",
        "notification.user.*",
        "notification.user.4 2",
        "notification.broadcast.x",
        "notification.other",
        "notification.#",
        "other.sales",
        "Dashboard.sales",
        "#",
    ],
)
def test_parse_rejects_keys_outside_the_contract(key: str) -> None:
    assert routing.parse(key) is None


# -- AMQP topic matching ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a.b.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a", False),  # `*` is exactly one word
        ("a.*", "a.b.c", False),
        ("*.b", "a.b", True),
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.#", "a", True),  # `#` may be zero words
        ("a.#", "a.b", True),
        ("a.#", "a.b.c.d", True),
        ("a.#", "b.a", False),
        ("#", "a", True),
        ("#", "a.b.c", True),
        ("#.a", "a", True),
        ("#.a", "x.y.a", True),
        ("#.a", "a.x", False),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y.c", False),
        ("a.*.#", "a", False),
        ("a.*.#", "a.b", True),
        ("dashboard.#", "notification.user.1", False),
        ("notification.user.#", "notification.user.a.b", True),
        ("notification.user.#", "notification.broadcast", False),
        ("notification.#", "notification.broadcast", True),
    ],
)
def test_matches(pattern: str, key: str, expected: bool) -> None:
    assert routing.matches(pattern, key) is expected


# -- properties -------------------------------------------------------------------------------

word = st.text(alphabet="abcxyz019-_", min_size=1, max_size=4)
words = st.lists(word, min_size=1, max_size=6)
pattern_word = st.one_of(word, st.just("*"), st.just("#"))
pattern_words = st.lists(pattern_word, min_size=1, max_size=6)


@given(words)
def test_a_key_matches_itself(parts: list[str]) -> None:
    key = ".".join(parts)
    assert routing.matches(key, key)


@given(words)
def test_hash_matches_everything(parts: list[str]) -> None:
    assert routing.matches("#", ".".join(parts))


@given(words)
def test_star_per_word_matches_exactly_that_many_words(parts: list[str]) -> None:
    key = ".".join(parts)
    assert routing.matches(".".join("*" * len(parts)), key)
    assert not routing.matches(".".join("*" * (len(parts) + 1)), key)
    if len(parts) > 1:
        assert not routing.matches(".".join("*" * (len(parts) - 1)), key)


@given(words, words)
def test_prefix_hash_matches_iff_the_prefix_is_there(prefix: list[str], rest: list[str]) -> None:
    pattern = ".".join([*prefix, "#"])
    assert routing.matches(pattern, ".".join(prefix))  # zero words
    assert routing.matches(pattern, ".".join(prefix + rest))


@given(pattern_words, words)
def test_matching_agrees_with_a_reference_implementation(
    pattern: list[str], key: list[str]
) -> None:
    assert routing.matches(".".join(pattern), ".".join(key)) is _reference(pattern, key)


def _reference(pattern: list[str], key: list[str]) -> bool:
    """Dynamic programming over (pattern index, key index): the textbook definition."""
    rows, cols = len(pattern), len(key)
    table = [[False] * (cols + 1) for _ in range(rows + 1)]
    table[0][0] = True
    for i in range(1, rows + 1):
        part = pattern[i - 1]
        for j in range(cols + 1):
            if part == "#":
                table[i][j] = table[i - 1][j] or (j > 0 and table[i][j - 1])
            elif j > 0:
                table[i][j] = table[i - 1][j - 1] and part in ("*", key[j - 1])
    return table[rows][cols]


valid_id = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30
).filter(routing.is_valid_id)


@given(valid_id)
def test_valid_ids_round_trip_through_parse(value: str) -> None:
    assert routing.parse(routing.user_key(value)) == Route(KeyKind.USER, value)
    assert routing.parse(routing.topic_key(value)) == Route(KeyKind.TOPIC, value)


@given(valid_id, valid_id)
def test_a_valid_id_never_widens_to_another_users_key(mine: str, theirs: str) -> None:
    """An exact binding for one user never matches another user's key (`a.b` vs `a`)."""
    assume(mine != theirs)
    assert not routing.matches(routing.user_key(mine), routing.user_key(theirs))
    assert not routing.matches(routing.topic_key(mine), routing.topic_key(theirs))


@given(st.text(max_size=30))
def test_a_valid_id_has_no_wildcard_or_empty_word(value: str) -> None:
    if routing.is_valid_id(value):
        assert "*" not in value
        assert "#" not in value
        assert all(value.split("."))
        assert value.strip() == value
