"""Canonical JSON out, strict JSON (I-JSON, RFC 7493) in."""

from __future__ import annotations

import json
import re
from typing import Any

from chain.protocol.errors import ProtocolError

MAX_INT = 2**53 - 1

_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(obj: Any) -> bytes:
    """``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` as UTF-8."""
    return _encoder.encode(obj).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ProtocolError("malformed", f"{name} is not allowed")


def _reject_float(text: str) -> Any:
    raise ProtocolError("malformed", f"number {text} is not an integer (floats and exponents are refused)")


def _parse_int(text: str) -> int:
    # Checked before int(): a long run of digits costs quadratic time, and past Python's
    # 4300-digit limit int() raises ValueError instead of the protocol's error.
    if len(text) > 17:
        raise ProtocolError("malformed", f"integer {text[:20]}... is outside [0, 2^53 - 1]")
    value = int(text)
    if value < 0 or value > MAX_INT:
        raise ProtocolError("malformed", f"integer {text} is outside [0, 2^53 - 1]")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    # One C-level pass each for the common case; the loop below only names the culprit.
    if len(obj) == len(pairs) and "".join(obj).isascii():
        return obj
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen:
            raise ProtocolError("malformed", f"duplicate key {key!r}")
        if not key.isascii():
            raise ProtocolError("malformed", f"key {key!r} is not ASCII")
        seen.add(key)
    return obj


_decoder = json.JSONDecoder(
    object_pairs_hook=_object, parse_float=_reject_float, parse_int=_parse_int, parse_constant=_reject_constant
)


def parse_strict(body: bytes | str) -> Any:
    """Parse ``body`` under the protocol's strict rules or raise ``malformed``."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("malformed", f"body is not valid UTF-8 at byte {exc.start}") from None
        literal_surrogates = False
    else:
        text = body
        literal_surrogates = not text.isascii()
    try:
        value = _decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError("malformed", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ProtocolError("malformed", "JSON nested too deeply") from None
    # Text decoded from UTF-8 holds no surrogate, so one can only come from a \uD800-\uDFFF
    # escape: the walk over every string runs only for a body that has one (or for a str
    # given by a caller, which may hold them literally).
    if literal_surrogates or _SURROGATE_ESCAPE.search(text):
        _reject_surrogates(value)
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_surrogates(value: Any) -> None:
    # A lone surrogate ("\ud800") decodes to a str that cannot be encoded as UTF-8.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ProtocolError("malformed", "string contains a lone surrogate") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def is_int(value: Any) -> bool:
    """A protocol integer: a JSON integer (not a boolean) in [0, 2^53 - 1]."""
    return type(value) is int and 0 <= value <= MAX_INT


def is_hex(value: Any, nbytes: int) -> bool:
    """Lowercase hex of exactly ``nbytes`` bytes."""
    if type(value) is not str or len(value) != 2 * nbytes:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return value == value.lower()
