"""The device's persisted trusted state, as a value: what it trusts and the floors it never goes below.

| field               | why it is persisted                                                      |
|---------------------|--------------------------------------------------------------------------|
| device_id           | assignments for any other id are refused                                  |
| director_root       | the newest director root verified (TUF Root JSON)                         |
| assignment_version  | the last accepted version; replays and older assignments are refused     |
| latest_known_time   | max of every trusted time seen: a clock reset to 1970 cannot revive data  |
| release_floors      | per model, the lowest release_counter still acceptable                    |
| image_metadata      | trusted TUF metadata of the image repository (root/timestamp/snapshot/targets) |

Serialization is pure (`encode`/`decode`); `manifests/client.py` writes the bytes atomically. Decoding is
strict: a state file that does not parse is an error, never a silent reset to "trust anything".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from tuf.api.metadata import Metadata, Root

from manifests import canonical
from manifests.assignment import format_time, parse_time
from manifests.errors import Reason, TrustError

STATE_SCHEMA = 1
MAX_STATE_BYTES = 32 * 1024 * 1024
IMAGE_ROLES = ("root", "timestamp", "snapshot", "targets")


@dataclass(frozen=True)
class TrustedState:
    device_id: str
    director_root: bytes
    latest_known_time: datetime
    assignment_version: int = 0
    release_floors: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    image_metadata: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    def with_release_floor(self, model: str, release_counter: int) -> TrustedState:
        """Raise (never lower) the release_counter floor of `model`."""
        floors = dict(self.release_floors)
        floors[model] = max(floors.get(model, 0), release_counter)
        return replace(self, release_floors=MappingProxyType(floors))

    def with_time(self, t: datetime) -> TrustedState:
        """Advance (never rewind) the latest known time."""
        return replace(self, latest_known_time=max(self.latest_known_time, t))


def enroll(device_id: str, director_root: bytes, image_root: bytes, now: datetime) -> TrustedState:
    """Initial state from the two roots pinned at enrollment (both must parse as TUF root metadata)."""
    for what, data in (("director root", director_root), ("image root", image_root)):
        try:
            Metadata[Root].from_bytes(data)
        except Exception as e:  # python-tuf raises several types for bad input; all mean the same here
            raise TrustError(Reason.STATE_INVALID, f"{what} is not TUF root metadata: {e}") from e
    return TrustedState(
        device_id=device_id,
        director_root=director_root,
        latest_known_time=now,
        image_metadata=MappingProxyType({"root": image_root}),
    )


def encode(state: TrustedState) -> bytes:
    return canonical.encode(
        {
            "schema": STATE_SCHEMA,
            "device_id": state.device_id,
            "director_root": state.director_root.decode("utf-8"),
            "latest_known_time": format_time(state.latest_known_time),
            "assignment_version": state.assignment_version,
            "release_floors": dict(state.release_floors),
            "image_metadata": {k: v.decode("utf-8") for k, v in state.image_metadata.items()},
        }
    )


def decode(data: bytes) -> TrustedState:
    raw = canonical.decode(data, max_bytes=MAX_STATE_BYTES, what="trusted state")
    try:
        if raw.get("schema") != STATE_SCHEMA:
            raise ValueError(f"schema must be {STATE_SCHEMA}, got {raw.get('schema')!r}")
        image: dict[str, Any] = raw["image_metadata"]
        floors: dict[str, Any] = raw["release_floors"]
        if set(image) - set(IMAGE_ROLES) or "root" not in image:
            raise ValueError(f"image_metadata must hold root and only {IMAGE_ROLES}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in floors.values()):
            raise ValueError("release_floors must map models to integers")
        version = raw["assignment_version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError("assignment_version must be an integer")
        return TrustedState(
            device_id=str(raw["device_id"]),
            director_root=str(raw["director_root"]).encode("utf-8"),
            latest_known_time=parse_time(raw["latest_known_time"], "latest_known_time"),
            assignment_version=version,
            release_floors=MappingProxyType(dict(floors)),
            image_metadata=MappingProxyType({k: str(v).encode("utf-8") for k, v in image.items()}),
        )
    except (KeyError, TypeError, ValueError, AttributeError, TrustError) as e:
        raise TrustError(Reason.STATE_INVALID, f"trusted state file is invalid: {e}") from e
