"""The pure core of assignment verification: bytes and trusted state in, a verified plan or TrustError out.

Nothing here touches files, sockets or the clock: time is an argument and the trusted state is a value.
`manifests/client.py` is the thin shell that loads the persisted state, drives python-tuf's Updater
against the image repository, calls these functions and persists the new state atomically.

The checks, in order (each refusal is a TrustError with its Reason; the state value is never mutated):

1. `check_assignment` — envelope size and shape; director root chain walked forward from the pinned root;
   threshold signature by the director role; then the body is parsed (only signed bytes are parsed);
   device id; version above the persisted one; expiry against max(clock, latest known time).
2. (shell) image-repository refresh with `tuf.ngclient.Updater`.
3. `check_image_fresh` — the refreshed metadata is not expired against the same effective time
   (python-tuf uses the raw system clock, which a reset to 1970 would fool).
4. `match_targets` — every pinned target is listed by the image repository with the same length and
   sha256, its custom fields belong to the assigned release, and its release_counter is not below the
   floor for that model: the higher of the persisted floor and the one the release key signed in the
   targets metadata (`release_floors`, see `signed_release_floors`).
5. `next_state` — the state to persist once everything passed (signed floors become persisted floors).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from tuf.api.metadata import Metadata, Root, Targets

from manifests import assignment as assignment_doc
from manifests.assignment import Assignment
from manifests.custom_fields import check_custom, parse_accuracy
from manifests.director import (
    MAX_ENVELOPE_BYTES,
    advance_root,
    check_root_fresh,
    check_signature,
    open_envelope,
)
from manifests.errors import Reason, TrustError
from manifests.state import IMAGE_ROLES, TrustedState
from manifests.target_names import target_store_key


@dataclass(frozen=True)
class SignedTarget:
    """One target as signed by the image repository's targets role (never as the director described it).

    `custom` holds kind ("variant" | "golden"), runtime, precision, arch, accelerator, runtime_version,
    release_counter, model, version and the build-time accuracy.
    """

    name: str
    length: int
    sha256: str
    custom: Mapping[str, Any]

    @property
    def store_key(self) -> str:
        """Where the bytes live in the artifact store (consistent-snapshot, hash-prefixed name)."""
        return target_store_key(self.name, self.sha256)

    @property
    def kind(self) -> str:
        return str(self.custom.get("kind", "variant"))

    @property
    def accuracy(self) -> float | None:
        """Build-time accuracy on the golden set, if the build recorded one."""
        return parse_accuracy(self.custom.get("accuracy"))


@dataclass(frozen=True)
class VerifiedPlan:
    """An assignment whose every target is signed by both the director and the image repository."""

    assignment: Assignment
    targets: tuple[SignedTarget, ...]

    @property
    def variants(self) -> tuple[SignedTarget, ...]:
        return tuple(t for t in self.targets if t.kind == "variant")

    @property
    def golden(self) -> SignedTarget | None:
        return next((t for t in self.targets if t.kind == "golden"), None)


@dataclass(frozen=True)
class CheckedAssignment:
    """An assignment that passed the director checks; the image repository is not consulted yet."""

    assignment: Assignment
    director_root: bytes
    effective_now: datetime


def effective_time(state: TrustedState, now: datetime) -> datetime:
    """The time checks use: the clock, but never earlier than any trusted time already seen."""
    return max(now, state.latest_known_time)


def check_assignment(
    envelope: bytes, state: TrustedState, now: datetime, *, max_envelope_bytes: int = MAX_ENVELOPE_BYTES
) -> CheckedAssignment:
    """Director checks: signature (pinned root, rotation followed), device, version, expiry."""
    env = open_envelope(envelope, max_bytes=max_envelope_bytes)
    try:
        trusted_root = Metadata[Root].from_bytes(state.director_root)
    except Exception as e:  # the state file was validated on load; this is corruption
        raise TrustError(Reason.STATE_INVALID, f"persisted director root does not parse: {e}") from e
    root = advance_root(trusted_root, env.roots)
    at = effective_time(state, now)
    check_root_fresh(root, at)
    check_signature(root.signed, env)
    a = assignment_doc.from_dict(env.signed)
    if a.device_id != state.device_id:
        raise TrustError(
            Reason.WRONG_DEVICE, f"assignment is for device {a.device_id!r}, this is {state.device_id!r}"
        )
    if a.version <= state.assignment_version:
        raise TrustError(
            Reason.REPLAYED,
            f"assignment version {a.version} is not above the last accepted {state.assignment_version}",
        )
    if a.expires_at <= at:
        raise TrustError(
            Reason.EXPIRED,
            f"assignment v{a.version} expired at {a.expires_at.isoformat()}, "
            f"latest known time is {at.isoformat()}",
        )
    director_root = state.director_root if root is trusted_root else root.to_bytes()
    return CheckedAssignment(a, director_root, at)


def check_image_fresh(image_metadata: Mapping[str, bytes], at: datetime) -> None:
    """Refuse image metadata that is expired at `at` (a frozen repository), whatever the clock says."""
    for role in IMAGE_ROLES:
        data = image_metadata.get(role)
        if data is None:
            raise TrustError(Reason.IMAGE_INVALID, f"image repository gave no {role} metadata")
        md = Metadata.from_bytes(data)
        if md.signed.is_expired(at):
            raise TrustError(
                Reason.IMAGE_EXPIRED,
                f"image {role} v{md.signed.version} expired at {md.signed.expires.isoformat()}, "
                f"latest known time is {at.isoformat()}",
            )


def signed_targets(targets_metadata: bytes) -> dict[str, SignedTarget]:
    """Targets listed in verified targets metadata, keyed by name (only sha256-hashed entries count)."""
    md = Metadata[Targets].from_bytes(targets_metadata)
    out: dict[str, SignedTarget] = {}
    for name, t in md.signed.targets.items():
        sha = t.hashes.get("sha256")
        custom = t.unrecognized_fields.get("custom", {})
        if isinstance(sha, str) and isinstance(custom, dict):
            out[name] = SignedTarget(name, t.length, sha, MappingProxyType(dict(custom)))
    return out


RELEASE_FLOORS_FIELD = "release_floors"
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")


def signed_release_floors(targets_metadata: bytes) -> dict[str, int]:
    """Per-model minimum release_counter signed by the release key at the top of the targets metadata.

    `{"release_floors": {"digits": 4}}` in the signed part of targets.json: how an operator blocks a
    known-bad release fleet-wide. Absent means none; anything but model ids mapped to non-negative
    integers is refused (image_invalid), never ignored.
    """
    md = Metadata[Targets].from_bytes(targets_metadata)
    return parse_release_floors(md.signed.unrecognized_fields.get(RELEASE_FLOORS_FIELD, {}))


def parse_release_floors(raw: object) -> dict[str, int]:
    """The `release_floors` object, checked (the writer and the verifier use the same rules)."""
    if not isinstance(raw, dict):
        raise TrustError(Reason.IMAGE_INVALID, f"targets {RELEASE_FLOORS_FIELD} must be an object, got {raw!r:.80}")
    floors: dict[str, int] = {}
    for model, counter in raw.items():
        if not isinstance(model, str) or not _MODEL_ID.match(model):
            raise TrustError(Reason.IMAGE_INVALID, f"targets {RELEASE_FLOORS_FIELD}: {model!r:.80} is no model id")
        if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
            raise TrustError(
                Reason.IMAGE_INVALID,
                f"targets {RELEASE_FLOORS_FIELD}[{model!r}] must be a non-negative integer, got {counter!r:.80}",
            )
        floors[model] = counter
    return floors


def effective_floors(persisted: Mapping[str, int], signed: Mapping[str, int]) -> dict[str, int]:
    """Floors only rise: the higher of what this device persisted and what the release key signed."""
    out = dict(persisted)
    for model, counter in signed.items():
        out[model] = max(out.get(model, 0), counter)
    return out


def match_targets(
    a: Assignment, image_targets: Mapping[str, SignedTarget], release_floors: Mapping[str, int]
) -> VerifiedPlan:
    """Every target the director pinned must be signed by the image repository exactly as pinned."""
    out: list[SignedTarget] = []
    floor = release_floors.get(a.release.model, 0)
    for pin in a.targets:
        t = image_targets.get(pin.name)
        if t is None:
            raise TrustError(Reason.TARGET_UNKNOWN, f"image repository does not list {pin.name!r}")
        if t.length != pin.length or t.sha256 != pin.sha256:
            raise TrustError(
                Reason.TARGET_MISMATCH,
                f"{pin.name!r}: director pinned {pin.length} bytes sha256 {pin.sha256[:16]}..., "
                f"image repository signed {t.length} bytes sha256 {t.sha256[:16]}...",
            )
        check_custom(t.name, t.custom)
        counter = int(t.custom["release_counter"])
        if counter < floor:
            raise TrustError(
                Reason.RELEASE_COUNTER_DOWNGRADE,
                f"{pin.name!r} has release_counter {counter}, this device accepts "
                f"{a.release.model} releases from {floor} on",
            )
        out.append(t)
    if not any(t.kind == "variant" for t in out):
        raise TrustError(Reason.TARGET_UNKNOWN, f"assignment v{a.version} pins no model variant")
    return VerifiedPlan(a, tuple(out))


def next_state(
    state: TrustedState, checked: CheckedAssignment, image_metadata: Mapping[str, bytes], now: datetime
) -> TrustedState:
    """The state to persist after a fully verified assignment."""
    a = checked.assignment
    floors = effective_floors(state.release_floors, signed_release_floors(image_metadata["targets"]))
    return replace(
        state,
        director_root=checked.director_root,
        assignment_version=a.version,
        latest_known_time=max(state.latest_known_time, now, a.issued_at),
        release_floors=MappingProxyType(floors),
        image_metadata=MappingProxyType(dict(image_metadata)),
    )
