"""Pure parts of the recovery: parsing `since`, the `resumed` data."""

from __future__ import annotations

import pytest

from service.errors import ProtocolError
from service.recovery import MAX_OFFSET, Resumed, parse_since


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0), (7, 7), ("0", 0), ("123", 123), (MAX_OFFSET, MAX_OFFSET)]
)
def test_since_accepts_non_negative_integers(value: object, expected: int) -> None:
    assert parse_since(value) == expected


@pytest.mark.parametrize(
    "value",
    [-1, "-1", "", "1.0", 1.0, True, None, [], "١٢", "+1", " 1", MAX_OFFSET + 1, "9" * 20],
)
def test_since_refuses_anything_else(value: object) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_since(value)
    assert info.value.code == "bad_request"


def test_resumed_data_has_the_contract_shape() -> None:
    assert Resumed(True, 3).as_data() == {"recovered": True, "replayed": 3}
