"""Canonical JSON: the one byte form that director signatures cover, and a strict bounded parser.

Signatures are computed over `encode(obj)`: keys sorted, no whitespace, UTF-8, no NaN/Infinity. Python's
float repr is the shortest string that round-trips, so a document parsed with `decode` and encoded again
yields the same bytes the signer produced. The parser refuses duplicate keys (two readers could otherwise
disagree on which value was signed), non-finite numbers and documents above a byte budget, before any
allocation proportional to the content happens.

This module deliberately does not handle TUF metadata: python-tuf serializes and verifies its own.
"""

from __future__ import annotations

import json
from typing import Any

from manifests.errors import Reason, TrustError


def encode(obj: Any) -> bytes:
    """Serialize `obj` canonically (sorted keys, compact separators, UTF-8, finite numbers only)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def decode(data: bytes, *, max_bytes: int, what: str) -> dict[str, Any]:
    """Parse `data` as one JSON object of at most `max_bytes`, refusing duplicates and NaN/Infinity."""
    if len(data) > max_bytes:
        raise TrustError(Reason.OVERSIZED, f"{what} is {len(data)} bytes, limit {max_bytes}")
    try:
        text = data.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TrustError(Reason.MALFORMED, f"{what} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise TrustError(Reason.MALFORMED, f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj
