"""Payload serializers: JSON and msgpack round-trips, attrs and dataclass instances, refusals,
decode errors."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import attrs
import pytest

from strego.errors import DecodeError, InvalidTaskError, SerializationError
from strego.serializers import (
    JsonSerializer,
    MsgpackSerializer,
    Serializer,
    converter,
)


@attrs.define
class Address:
    city: str
    zip: str


@attrs.define
class Order:
    id: int
    items: list[str]
    address: Address
    note: str | None = None


@dataclasses.dataclass
class Parcel:
    weight: float
    to: Address
    tags: list[str] = dataclasses.field(default_factory=list)


SERIALIZERS = [JsonSerializer, MsgpackSerializer]

ROUND_TRIP = [
    None,
    True,
    0,
    -(2**53),
    3.141592653589793,
    "",
    "héllo ✓ 😀",
    "\x00control\n",
    [],
    [1, "two", [3.0, None]],
    {},
    {"nested": {"list": [1, 2], "flag": False}, "unicode": "ü"},
]


@pytest.fixture(params=SERIALIZERS, ids=lambda cls: cls.name)
def serializer(request: pytest.FixtureRequest) -> Serializer:
    instance: Serializer = request.param()
    return instance


def test_is_a_serializer(serializer: Serializer) -> None:
    assert isinstance(serializer, Serializer)
    assert serializer.name in {"json", "msgpack"}


@pytest.mark.parametrize("payload", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_round_trip(serializer: Serializer, payload: Any) -> None:
    data = serializer.dumps(payload)
    assert isinstance(data, bytes)
    assert serializer.loads(data) == payload


def test_float_exact(serializer: Serializer) -> None:
    for value in [0.1, 1e-300, 1.7976931348623157e308, -0.0]:
        back = serializer.loads(serializer.dumps(value))
        assert back == value and math.copysign(1, back) == math.copysign(1, value)


def test_attrs_instance_unstructured(serializer: Serializer) -> None:
    order = Order(7, ["a", "b"], Address("Oslo", "0150"))
    plain = serializer.loads(serializer.dumps(order))
    assert plain == {
        "id": 7,
        "items": ["a", "b"],
        "address": {"city": "Oslo", "zip": "0150"},
        "note": None,
    }
    assert converter.structure(plain, Order) == order


def test_dataclass_instance_unstructured(serializer: Serializer) -> None:
    parcel = Parcel(1.5, Address("Oslo", "0150"), ["fragile"])
    plain = serializer.loads(serializer.dumps(parcel))
    assert plain == {"weight": 1.5, "to": {"city": "Oslo", "zip": "0150"}, "tags": ["fragile"]}
    assert converter.structure(plain, Parcel) == parcel


def test_dataclass_class_is_not_a_payload(serializer: Serializer) -> None:
    with pytest.raises(SerializationError):
        serializer.dumps(Parcel)


def test_json_is_compact_utf8() -> None:
    assert JsonSerializer().dumps({"a": [1, 2], "b": "ü"}) == '{"a":[1,2],"b":"ü"}'.encode()


def test_json_lone_surrogate_round_trips() -> None:
    payload = {"s": "a\ud800b", "t": "\udfff"}
    data = JsonSerializer().dumps(payload)
    data.decode("utf-8")  # stored bytes stay valid UTF-8 (surrogates escaped)
    assert JsonSerializer().loads(data) == payload


def test_msgpack_bytes_round_trip() -> None:
    payload = {"blob": b"\x00\xff", "text": "x"}
    assert MsgpackSerializer().loads(MsgpackSerializer().dumps(payload)) == payload


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1, math.nan]])
def test_json_refuses_nan_and_infinity(value: Any) -> None:
    with pytest.raises(SerializationError):
        JsonSerializer().dumps(value)


@pytest.mark.parametrize("value", [object(), {1, 2}, {"k": object()}])
def test_unserializable_refused(serializer: Serializer, value: Any) -> None:
    with pytest.raises(SerializationError) as exc_info:
        serializer.dumps(value)
    assert isinstance(exc_info.value, InvalidTaskError)  # refused before anything is written


def test_json_refuses_bytes() -> None:
    with pytest.raises(SerializationError):
        JsonSerializer().dumps({"blob": b"\x00"})


def test_json_refuses_deep_nesting() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(SerializationError):
        JsonSerializer().dumps(deep)


def test_msgpack_refuses_huge_int() -> None:
    with pytest.raises(SerializationError):
        MsgpackSerializer().dumps(2**70)


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"[1,]", b"NaNx", b"'single'"])
def test_json_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        JsonSerializer().loads(data)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\xd9\x05ab"])
def test_msgpack_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        MsgpackSerializer().loads(data)


@pytest.mark.parametrize(
    "data",
    [
        b'\xef\xbb\xbf{"a":[1,"\xc3\xa9"]}',  # UTF-8 with a BOM
        '{"a":[1,"é"]}'.encode("utf-16"),
        '{"a":[1,"é"]}'.encode("utf-32-le"),
    ],
)
def test_json_reads_every_encoding_json_allows(data: bytes) -> None:
    # dumps writes UTF-8 without a BOM, read by the fast path; other writers may use the rest
    assert JsonSerializer().loads(data) == {"a": [1, "é"]}
