"""Payload serializers. A serializer turns a payload into bytes at enqueue and back at run time;
its `name` is stored with the task so the worker decodes with the same one. Raw `bytes` payloads
skip serialization and are stored as they are (encoding ``"raw"``).

JSON is the default. attrs and dataclass instances are unstructured with cattrs first, so typed
handlers can structure them back."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any, Protocol, runtime_checkable

import attrs
import cattrs

from strego.errors import DecodeError, SerializationError

RAW_ENCODING = "raw"

converter = cattrs.Converter()


@runtime_checkable
class Serializer(Protocol):
    """Turns payloads into bytes and back. `name` identifies it in stored tasks."""

    name: str

    def dumps(self, payload: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


#: Types that need no unstructuring (the common payloads: spares the attrs/dataclass checks).
_BUILTIN = frozenset({dict, list, tuple, str, int, float, bool, type(None)})

# One encoder for every call: json.dumps with options builds a new JSONEncoder each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder()


def _plain(payload: Any) -> Any:
    kind = type(payload)
    if kind in _BUILTIN:
        return payload
    # the type, not the value: is_dataclass is true for a dataclass class object as well
    if attrs.has(kind) or dataclasses.is_dataclass(kind):
        return converter.unstructure(payload)
    return payload


class JsonSerializer:
    """Compact UTF-8 JSON. NaN and infinities are refused (they are not JSON)."""

    name = "json"

    def dumps(self, payload: Any) -> bytes:
        try:
            text = _ENCODER.encode(_plain(payload))
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"payload is not JSON-serializable: {exc}") from exc
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escape them, so they round-trip exactly
            return _ASCII_ENCODER.encode(_plain(payload)).encode()

    def loads(self, data: bytes) -> Any:
        try:
            try:
                # what dumps writes: UTF-8 without a BOM (json.loads would first guess the
                # encoding, half the cost of decoding a small payload)
                return _DECODER.decode(data.decode())
            except ValueError:
                # anything else JSON allows (a BOM, UTF-16 or UTF-32), or the error json.loads
                # gives for what is not JSON
                return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise DecodeError(f"payload is not valid JSON: {exc}") from exc


class MsgpackSerializer:
    """msgpack (needs the ``msgpack`` package: ``pip install strego[msgpack]``)."""

    name = "msgpack"

    def __init__(self) -> None:
        import msgpack  # type: ignore[import-untyped]  # optional, imported when chosen

        self._msgpack = msgpack

    def dumps(self, payload: Any) -> bytes:
        try:
            data: bytes = self._msgpack.packb(_plain(payload), use_bin_type=True)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise SerializationError(f"payload is not msgpack-serializable: {exc}") from exc
        return data

    def loads(self, data: bytes) -> Any:
        try:
            return self._msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise DecodeError(f"payload is not valid msgpack: {exc}") from exc


def default_serializers() -> list[Serializer]:
    """JSON, and msgpack when it is installed."""
    found: list[Serializer] = [JsonSerializer()]
    with contextlib.suppress(ImportError):  # msgpack is optional
        found.append(MsgpackSerializer())
    return found
