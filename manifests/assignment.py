"""The director assignment: what one device should run, under which policies, until when.

An assignment is the `signed` body of a director envelope (see `manifests/director.py`). It is a typed,
versioned document (`"schema": 1`) with a canonical JSON form, parsed strictly: unknown fields, wrong
types, out-of-range policy values and oversized documents are refused with a `TrustError` naming the
field. Everything here is pure; no I/O.

Wire form (keys sorted when encoded):

    {"schema": 1, "type": "assignment", "device_id": "jetson-17", "version": 42,
     "issued_at": "2026-11-24T21:00:00Z", "expires_at": "2026-12-24T21:00:00Z",
     "release": {"model": "digits-mlp", "version": "3"},
     "targets": [{"name": "models/digits-mlp/3/ort-fp32.onnx", "length": 123, "sha256": "..."}],
     "gate": {...}, "probation": {...}, "capture": {...}, "rollout_id": "r-12" | null}

`targets` pins every target of the release the director vouches for (variants and golden set). The
verifier requires each pin to be listed and signed by the image repository with the same length and hash.

Fields added to a policy after schema 1 was fielded (`LATE_FIELDS`: `gate.max_accuracy_drop`,
`probation.max_confidence_drop`) are written only when they differ from their default, and read as the
default when absent. Documents from older controllers therefore keep their meaning, and agents that
predate a field keep accepting ordinary assignments while refusing (unknown field) exactly those that
need its new meaning: a fleet rollback that waives the accuracy-drop check, or a probation that judges
confidence, must not reach a device that cannot honour it.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from manifests import canonical
from manifests.errors import Reason, TrustError
from manifests.target_names import release_prefix, validate_target_name

SCHEMA = 1
MAX_ASSIGNMENT_BYTES = 64 * 1024
MAX_TARGETS = 64
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class ReleaseRef:
    """A model release: the `<model>/<version>` part of its target names."""

    model: str
    version: str


@dataclass(frozen=True)
class TargetPin:
    """One target the director vouches for; the image repository must sign the same length and hash."""

    name: str
    length: int
    sha256: str


@dataclass(frozen=True)
class GatePolicy:
    """Budgets a candidate must meet on the device before it may serve (None: not checked)."""

    min_accuracy: float | None = None
    min_agreement: float | None = 0.95
    max_latency_p95_ms: float | None = None
    max_latency_regression_ratio: float | None = 1.5
    max_memory_mb: float | None = None
    allow_int8: bool = True
    # How far below the model it replaces a candidate's golden-set accuracy may fall. None waives the
    # check: the controller signs that only for rollbacks to a release the fleet already ran.
    max_accuracy_drop: float | None = 0.02


@dataclass(frozen=True)
class ProbationPolicy:
    """What the newly activated model is watched for, and for how long, before it commits."""

    window_s: float = 300.0
    max_error_rate: float = 0.01
    max_latency_p99_ratio: float = 2.0
    min_agreement: float | None = None
    max_nan_rate: float = 0.0
    # How far the new model's mean top-1 confidence may fall below the previous model's on the same
    # shadowed requests (absolute, 0..1). None: not judged; a model's calibration legitimately moves
    # between releases, so only a rollout that knows its models sets a limit.
    max_confidence_drop: float | None = None


@dataclass(frozen=True)
class CapturePolicy:
    """Which inference samples the device keeps for retraining, and its budgets."""

    enabled: bool = False
    random_rate: float = 0.0
    low_confidence_threshold: float | None = None
    capture_disagreement: bool = False
    max_samples_per_hour: int = 0
    max_bytes_per_day: int = 0


@dataclass(frozen=True, kw_only=True)
class Assignment:
    """The signed instruction for one device. `version` grows monotonically per device."""

    schema: int = SCHEMA
    device_id: str
    version: int
    issued_at: datetime
    expires_at: datetime
    release: ReleaseRef
    targets: tuple[TargetPin, ...] = ()
    gate: GatePolicy = field(default_factory=GatePolicy)
    probation: ProbationPolicy = field(default_factory=ProbationPolicy)
    capture: CapturePolicy = field(default_factory=CapturePolicy)
    rollout_id: str | None = None


def format_time(t: datetime) -> str:
    """UTC, second precision, `Z` suffix: the form TUF metadata uses too."""
    if t.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return t.astimezone(timezone.utc).strftime(_TIME_FORMAT)


def parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise TrustError(Reason.MALFORMED, f"{where} must be a time string, got {type(value).__name__}")
    try:
        return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise TrustError(
            Reason.MALFORMED, f"{where} must look like 2026-01-31T12:00:00Z, got {value!r}"
        ) from e


LATE_FIELDS: dict[str, frozenset[str]] = {
    "gate": frozenset({"max_accuracy_drop"}),
    "probation": frozenset({"max_confidence_drop"}),
}


def _policy_dict(policy: Any, section: str) -> dict[str, Any]:
    """The policy's fields; late fields only when they differ from their default (see module docstring)."""
    out = asdict(policy)
    defaults = type(policy)()
    for name in LATE_FIELDS.get(section, frozenset()):
        if out[name] == getattr(defaults, name):
            del out[name]
    return out


def to_dict(a: Assignment) -> dict[str, Any]:
    """The JSON object form of an assignment (the director's `signed` body)."""
    return {
        "schema": a.schema,
        "type": "assignment",
        "device_id": a.device_id,
        "version": a.version,
        "issued_at": format_time(a.issued_at),
        "expires_at": format_time(a.expires_at),
        "release": asdict(a.release),
        "targets": [asdict(t) for t in a.targets],
        "gate": _policy_dict(a.gate, "gate"),
        "probation": _policy_dict(a.probation, "probation"),
        "capture": asdict(a.capture),
        "rollout_id": a.rollout_id,
    }


def encode(a: Assignment) -> bytes:
    """Canonical bytes of the assignment body; validated first so the controller cannot sign garbage."""
    body = to_dict(a)
    from_dict(body)
    return canonical.encode(body)


def decode(data: bytes, *, max_bytes: int = MAX_ASSIGNMENT_BYTES) -> Assignment:
    """Parse canonical or plain JSON bytes of an assignment body."""
    return from_dict(canonical.decode(data, max_bytes=max_bytes, what="assignment"))


# --- strict field readers -------------------------------------------------------------------------


def _obj(value: object, where: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TrustError(Reason.MALFORMED, f"{where} must be an object, got {type(value).__name__}")
    unknown = set(value) - allowed
    if unknown:
        raise TrustError(Reason.MALFORMED, f"{where} has unknown fields {sorted(unknown)}")
    missing = required - set(value)
    if missing:
        raise TrustError(Reason.MALFORMED, f"{where} is missing fields {sorted(missing)}")
    return value


def _int(value: object, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrustError(Reason.MALFORMED, f"{where} must be an integer, got {value!r}")
    if value < minimum:
        raise TrustError(Reason.MALFORMED, f"{where} must be >= {minimum}, got {value}")
    return value


def _num(value: object, where: str, low: float = 0.0, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrustError(Reason.MALFORMED, f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise TrustError(Reason.MALFORMED, f"{where} must be a finite number, got {value!r}")
    if number < low or (high is not None and number > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise TrustError(Reason.MALFORMED, f"{where} must be in {bound}, got {value}")
    return number


def _ident(value: object, where: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise TrustError(
            Reason.MALFORMED, f"{where} must be a short identifier ([A-Za-z0-9._+-]), got {value!r}"
        )
    return value


def read_policy(cls: type[Any], value: object, where: str) -> Any:
    """Read a policy object field by field, typed by the dataclass annotations ("float | None", "int", ...).

    Public because the controller checks operators' policy overrides with it: what it accepts there is
    exactly what agents accept once signed. Raises TrustError(MALFORMED) naming `where.<field>`.
    """
    types = {f.name: str(f.type) for f in fields(cls)}
    raw = _obj(value, where, set(types), set())
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for name, annotation in types.items():
        v = raw.get(name, getattr(defaults, name))
        path = f"{where}.{name}"
        if v is None:
            if "None" not in annotation:
                raise TrustError(Reason.MALFORMED, f"{path} may not be null")
        elif annotation == "bool":
            if not isinstance(v, bool):
                raise TrustError(Reason.MALFORMED, f"{path} must be true or false, got {v!r}")
        elif annotation.startswith("int"):
            v = _int(v, path)
        else:
            v = _num(v, path, 0.0, 1.0 if _is_fraction(name) else None)
        kwargs[name] = v
    return cls(**kwargs)


def _is_fraction(name: str) -> bool:
    return name.endswith(("_rate", "_agreement", "_accuracy", "_threshold", "_accuracy_drop", "_confidence_drop"))


_FIELDS = {
    "schema",
    "type",
    "device_id",
    "version",
    "issued_at",
    "expires_at",
    "release",
    "targets",
    "gate",
    "probation",
    "capture",
    "rollout_id",
}


def from_dict(raw: object) -> Assignment:
    """Validate a parsed JSON object and build the Assignment; every refusal names the field."""
    if isinstance(raw, dict) and raw.get("schema") != SCHEMA:
        raise TrustError(
            Reason.SCHEMA_UNSUPPORTED, f"assignment schema must be {SCHEMA}, got {raw.get('schema')!r}"
        )
    body = _obj(raw, "assignment", _FIELDS, _FIELDS - {"gate", "probation", "capture", "rollout_id"})
    if body["type"] != "assignment":
        raise TrustError(Reason.MALFORMED, f"document type must be 'assignment', got {body['type']!r}")
    rel = _obj(body["release"], "release", {"model", "version"}, {"model", "version"})
    release = ReleaseRef(_ident(rel["model"], "release.model"), _ident(rel["version"], "release.version"))
    raw_targets = body["targets"]
    if not isinstance(raw_targets, list) or not 1 <= len(raw_targets) <= MAX_TARGETS:
        raise TrustError(Reason.MALFORMED, f"targets must be a list of 1..{MAX_TARGETS} pins")
    pins: list[TargetPin] = []
    for i, t in enumerate(raw_targets):
        pin = _obj(t, f"targets[{i}]", {"name", "length", "sha256"}, {"name", "length", "sha256"})
        name = validate_target_name(pin["name"])
        if not name.startswith(release_prefix(release.model, release.version)):
            raise TrustError(
                Reason.MALFORMED,
                f"targets[{i}] {name!r} is not part of release {release.model}/{release.version}",
            )
        sha = pin["sha256"]
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise TrustError(Reason.MALFORMED, f"targets[{i}].sha256 must be 64 lowercase hex digits")
        pins.append(TargetPin(name, _int(pin["length"], f"targets[{i}].length"), sha))
    if len({p.name for p in pins}) != len(pins):
        raise TrustError(Reason.MALFORMED, "targets lists the same name twice")
    rollout_id = body.get("rollout_id")
    if rollout_id is not None:
        rollout_id = _ident(rollout_id, "rollout_id")
    issued_at = parse_time(body["issued_at"], "issued_at")
    expires_at = parse_time(body["expires_at"], "expires_at")
    if expires_at <= issued_at:
        raise TrustError(Reason.MALFORMED, "expires_at must be after issued_at")
    return Assignment(
        schema=SCHEMA,
        device_id=_ident(body["device_id"], "device_id"),
        version=_int(body["version"], "version", minimum=1),
        issued_at=issued_at,
        expires_at=expires_at,
        release=release,
        targets=tuple(pins),
        gate=read_policy(GatePolicy, body.get("gate", {}), "gate"),
        probation=read_policy(ProbationPolicy, body.get("probation", {}), "probation"),
        capture=read_policy(CapturePolicy, body.get("capture", {}), "capture"),
        rollout_id=rollout_id,
    )
