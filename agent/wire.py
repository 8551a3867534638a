"""Wire formats the agent publishes over MQTT: `status`, `events` and `online` payloads.

The agent runs without pydantic, so these are frozen dataclasses with hand-written checks; the
controller imports the same decoders, so both ends share one definition of every field. Every payload
is a UTF-8 JSON object with `"schema": 1`, bounded in size, and decoding rejects anything else with a
`WireError` that names the field, what was expected and what arrived.

Sequence numbers: every status and event carries `stream` (a random id fixed when the device's outbox
is created) and `seq` (strictly increasing within that stream). The controller deduplicates by
(device, stream, seq); a wiped device starts a new stream instead of colliding with its old numbers.

This module deliberately knows nothing about topics' transport (see `agent.mqtt`) nor about the
signed assignment, whose format and verification belong to `manifests`.

Errors::

    WireError(ValueError)   payload is not a valid message; retrying the same bytes cannot help
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1
TOPIC_ROOT = "edgefleet/v1"
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_DETAILS_ITEMS = 64
MAX_TEXT_CHARS = 2048

# Device ids become MQTT topic levels and broker usernames: no wildcards, separators or '$'.
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STREAM_RE = re.compile(r"^[0-9a-f]{8,64}$")

# Update lifecycle event kinds, as persisted by the controller; never rename a value.
EVENT_KINDS = frozenset(
    {
        "assignment_received",
        "assignment_rejected",
        "download_started",
        "download_failed",
        "gate_passed",
        "gate_failed",
        "activated",
        "probation_passed",
        "probation_failed",
        "rolled_back",
        "committed",
        "failed",
    }
)
PRESENCE_STATES = frozenset({"online", "offline"})

DetailValue = str | int | float | bool | None


class WireError(ValueError):
    """A payload that is not a valid edgefleet message; the same bytes will always fail."""


def is_device_id(value: str) -> bool:
    return DEVICE_ID_RE.match(value) is not None


def topic(device_id: str, channel: str) -> str:
    """`edgefleet/v1/<device>/<channel>`; refuses device ids that would escape their topic level."""
    if not is_device_id(device_id):
        raise WireError(f"device id {device_id!r} is not a valid topic level")
    return f"{TOPIC_ROOT}/{device_id}/{channel}"


def parse_topic(name: str) -> tuple[str, str]:
    """Split `edgefleet/v1/<device>/<channel>` into (device, channel)."""
    parts = name.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or not is_device_id(parts[2]):
        raise WireError(f"topic {name!r} is not {TOPIC_ROOT}/<device>/<channel>")
    return parts[2], parts[3]


@dataclass(frozen=True)
class ActiveModel:
    model: str
    version: str
    variant: str
    sha256: str


@dataclass(frozen=True)
class Status:
    """Retained; the latest one says what the device runs and where its update stands."""

    device_id: str
    stream: str
    seq: int
    sent_at: float
    state: str
    active: ActiveModel | None = None
    assignment_version: int | None = None
    rollout_id: str | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Event:
    """One update lifecycle step; `details` carries the gate report or probation figures (flat)."""

    device_id: str
    stream: str
    seq: int
    sent_at: float
    kind: str
    assignment_version: int | None = None
    rollout_id: str | None = None
    model: str | None = None
    version: str | None = None
    reason: str | None = None
    details: Mapping[str, DetailValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Presence:
    """Retained on `online`; the broker publishes the `offline` one as the last will."""

    device_id: str
    state: str
    agent_version: str | None = None


Message = Status | Event | Presence


def encode(message: Message) -> bytes:
    body: dict[str, Any] = {"schema": SCHEMA}
    if isinstance(message, Status):
        body.update(
            kind="status",
            device_id=message.device_id,
            stream=message.stream,
            seq=message.seq,
            sent_at=message.sent_at,
            state=message.state,
            active=None if message.active is None else message.active.__dict__,
            assignment_version=message.assignment_version,
            rollout_id=message.rollout_id,
            last_error=message.last_error,
        )
    elif isinstance(message, Event):
        body.update(
            kind="event",
            device_id=message.device_id,
            stream=message.stream,
            seq=message.seq,
            sent_at=message.sent_at,
            event=message.kind,
            assignment_version=message.assignment_version,
            rollout_id=message.rollout_id,
            model=message.model,
            version=message.version,
            reason=message.reason,
            details=dict(message.details),
        )
    else:
        body.update(
            kind="presence",
            device_id=message.device_id,
            state=message.state,
            agent_version=message.agent_version,
        )
    data = json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    if len(data) > MAX_PAYLOAD_BYTES:
        raise WireError(f"{body['kind']} payload is {len(data)} bytes, limit {MAX_PAYLOAD_BYTES}")
    # Validate what we send with the same rules the controller applies.
    decode(data)
    return data


def decode(data: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> Message:
    """Parse and validate one payload; raises WireError on anything unexpected."""
    if len(data) > max_bytes:
        raise WireError(f"payload is {len(data)} bytes, limit {max_bytes}")
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError(f"payload is not UTF-8 JSON: {e}") from e
    if not isinstance(body, dict):
        raise WireError(f"payload must be a JSON object, got {type(body).__name__}")
    if body.get("schema") != SCHEMA:
        raise WireError(f"expected schema {SCHEMA}, got {body.get('schema')!r}")
    kind = body.get("kind")
    if kind == "status":
        return _decode_status(body)
    if kind == "event":
        return _decode_event(body)
    if kind == "presence":
        state = _text(body, "state")
        if state not in PRESENCE_STATES:
            raise WireError(f"presence state must be one of {sorted(PRESENCE_STATES)}, got {state!r}")
        _only(body, {"schema", "kind", "device_id", "state", "agent_version"})
        return Presence(_device(body), state, _opt_text(body, "agent_version"))
    raise WireError(f"kind must be status, event or presence, got {kind!r}")


def _decode_status(body: dict[str, Any]) -> Status:
    _only(
        body,
        {"schema", "kind", "device_id", "stream", "seq", "sent_at", "state", "active",
         "assignment_version", "rollout_id", "last_error"},
    )
    active_raw = body.get("active")
    active: ActiveModel | None = None
    if active_raw is not None:
        if not isinstance(active_raw, dict):
            raise WireError(f"active must be an object or null, got {type(active_raw).__name__}")
        _only(active_raw, {"model", "version", "variant", "sha256"})
        active = ActiveModel(*(_text(active_raw, k) for k in ("model", "version", "variant", "sha256")))
    return Status(
        device_id=_device(body),
        stream=_stream(body),
        seq=_count(body, "seq"),
        sent_at=_time(body),
        state=_text(body, "state"),
        active=active,
        assignment_version=_opt_count(body, "assignment_version"),
        rollout_id=_opt_text(body, "rollout_id"),
        last_error=_opt_text(body, "last_error"),
    )


def _decode_event(body: dict[str, Any]) -> Event:
    _only(
        body,
        {"schema", "kind", "device_id", "stream", "seq", "sent_at", "event", "assignment_version",
         "rollout_id", "model", "version", "reason", "details"},
    )
    event_kind = _text(body, "event")
    if event_kind not in EVENT_KINDS:
        raise WireError(f"event must be one of {sorted(EVENT_KINDS)}, got {event_kind!r}")
    details_raw = body.get("details", {})
    if not isinstance(details_raw, dict) or len(details_raw) > MAX_DETAILS_ITEMS:
        raise WireError(f"details must be an object of at most {MAX_DETAILS_ITEMS} items")
    details: dict[str, DetailValue] = {}
    for key, value in details_raw.items():
        if len(key) > 128:
            raise WireError(f"details key {key[:40]!r}… is longer than 128 characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise WireError(f"details[{key!r}] is not finite")
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise WireError(f"details[{key!r}] is longer than {MAX_TEXT_CHARS} characters")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise WireError(f"details[{key!r}] must be a string, number, boolean or null")
        details[key] = value
    return Event(
        device_id=_device(body),
        stream=_stream(body),
        seq=_count(body, "seq"),
        sent_at=_time(body),
        kind=event_kind,
        assignment_version=_opt_count(body, "assignment_version"),
        rollout_id=_opt_text(body, "rollout_id"),
        model=_opt_text(body, "model"),
        version=_opt_text(body, "version"),
        reason=_opt_text(body, "reason"),
        details=details,
    )


def _reject_constant(name: str) -> Any:
    raise WireError(f"{name} is not allowed in payloads")


def _only(body: Mapping[str, Any], allowed: set[str]) -> None:
    extra = set(body) - allowed
    if extra:
        raise WireError(f"unexpected fields {sorted(extra)}")


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_CHARS:
        raise WireError(f"{key} must be a non-empty string of at most {MAX_TEXT_CHARS} chars, got {value!r:.80}")
    return value


def _opt_text(body: Mapping[str, Any], key: str) -> str | None:
    return None if body.get(key) is None else _text(body, key)


def _count(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise WireError(f"{key} must be a non-negative integer, got {value!r:.40}")
    return value


def _opt_count(body: Mapping[str, Any], key: str) -> int | None:
    return None if body.get(key) is None else _count(body, key)


def _time(body: Mapping[str, Any]) -> float:
    value = body.get("sent_at")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WireError(f"sent_at must be a finite number of seconds, got {value!r:.40}")
    return float(value)


def _device(body: Mapping[str, Any]) -> str:
    value = _text(body, "device_id")
    if not is_device_id(value):
        raise WireError(f"device_id {value!r:.80} does not match {DEVICE_ID_RE.pattern}")
    return value


def _stream(body: Mapping[str, Any]) -> str:
    value = _text(body, "stream")
    if not STREAM_RE.match(value):
        raise WireError(f"stream must be 8-64 lowercase hex digits, got {value!r:.80}")
    return value
