"""The `telemetry` payload: one batch of metric points from one device, shared by agent and controller.

A batch carries `stream` and `seq` from the agent's MQTT outbox (the controller deduplicates by
(device, stream, seq), as for events) and a list of points. A point covers `[start_s, end_s)` at a
`resolution_s`: the sampling interval for raw points, 60 or 3600 for points the agent rolled up
itself while its spool was full. Model metrics are *deltas* over the point's interval, with the latency
histogram in the fixed log-bucket layout of `agent.metrics.histogram`, so any set of points from any
devices merges into exact fleet percentiles (to bucket resolution). An optional `capture` object
carries the sample-capture counters (`agent.telemetry.capture_counts`).

Decoding is strict and bounded: unknown fields, wrong types, negative counts, non-finite numbers, too
many points or models, and a histogram of another layout raise `TelemetryWireError` (a `WireError`)
naming the field. The same bytes always fail, so a rejected batch is counted, never retried.

The controller decodes every batch it ingests, so `decode` has two paths with one meaning:
`fast_batch` accepts a well-formed batch in plain JSON types with exact type tests and no per-field
messages, and returns None for anything else; `batch_from_dict`, the reference, then walks the fields
one by one and refuses with the first bad field's message. The fast path accepts a subset of what the
reference accepts, decoded to the same values (tests/telemetry/test_wire_fastpath.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent import wire
from agent.metrics.histogram import HistogramError, LatencyHistogram
from agent.telemetry.capture_counts import CaptureCounts, CaptureCountsError, counts_from_dict, fast_counts

MAX_TELEMETRY_BYTES = 256 * 1024
MAX_POINTS = 120
MAX_MODELS_PER_POINT = 16
MAX_ZONES = 32
ALLOWED_RESOLUTIONS_S = frozenset({60, 3600})  # besides the raw sampling interval (1..600 s)


class TelemetryWireError(wire.WireError):
    """A telemetry payload that is not valid; the same bytes will always fail (retry: no)."""


@dataclass(frozen=True)
class SystemSample:
    cpu_pct: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    disk_used_pct: float | None = None
    temps_c: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSample:
    """Counts over one point's interval for one served (model, version, variant)."""

    model: str
    version: str
    variant: str
    requests: int
    errors: int
    latency: LatencyHistogram


@dataclass(frozen=True)
class Point:
    start_s: float
    end_s: float
    resolution_s: int
    system: SystemSample
    models: tuple[ModelSample, ...] = ()
    samples: int = 1  # raw samples merged into this point (1 for a raw point)


@dataclass(frozen=True)
class TelemetryBatch:
    device_id: str
    stream: str
    seq: int
    sent_at: float
    points: tuple[Point, ...]
    hardware_class: str | None = None
    update_state: str | None = None
    dropped_points: int = 0  # points the agent had to discard (ever): reported, never silent
    rolled_up_points: int = 0
    capture: CaptureCounts | None = None  # sample-capture counters; absent when the device counted none


def encode(batch: TelemetryBatch) -> bytes:
    body: dict[str, Any] = {
        "schema": wire.SCHEMA,
        "kind": "telemetry",
        "device_id": batch.device_id,
        "stream": batch.stream,
        "seq": batch.seq,
        "sent_at": batch.sent_at,
        "hardware_class": batch.hardware_class,
        "update_state": batch.update_state,
        "dropped_points": batch.dropped_points,
        "rolled_up_points": batch.rolled_up_points,
        "points": [point_to_dict(p) for p in batch.points],
    }
    if batch.capture is not None:  # omitted otherwise: batches stay valid for controllers that predate it
        body["capture"] = batch.capture.to_dict()
    data = json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    if len(data) > MAX_TELEMETRY_BYTES:
        raise TelemetryWireError(f"telemetry payload is {len(data)} bytes, limit {MAX_TELEMETRY_BYTES}")
    return data


def point_to_dict(p: Point) -> dict[str, Any]:
    s = p.system
    return {
        "start_s": p.start_s,
        "end_s": p.end_s,
        "resolution_s": p.resolution_s,
        "samples": p.samples,
        "system": {
            "cpu_pct": s.cpu_pct,
            "mem_used_mb": s.mem_used_mb,
            "mem_total_mb": s.mem_total_mb,
            "disk_used_pct": s.disk_used_pct,
            "temps_c": dict(s.temps_c),
        },
        "models": [
            {"model": m.model, "version": m.version, "variant": m.variant, "requests": m.requests,
             "errors": m.errors, "latency": m.latency.to_wire()}
            for m in p.models
        ],
    }


def decode(data: bytes, max_bytes: int = MAX_TELEMETRY_BYTES) -> TelemetryBatch:
    """Parse and check one batch: the fast path for a well-formed batch, the strict field-by-field
    walk (`batch_from_dict`) for anything it does not accept, so every refusal names its field."""
    if len(data) > max_bytes:
        raise TelemetryWireError(f"telemetry payload is {len(data)} bytes, limit {max_bytes}")
    try:
        body = _JSON.decode(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, an integer beyond int's digit limit
        raise TelemetryWireError(f"telemetry payload is not UTF-8 JSON: {e}") from e
    if type(body) is dict:
        batch = fast_batch(body)
        if batch is not None:
            return batch
    return batch_from_dict(body)


def batch_from_dict(body: Any) -> TelemetryBatch:
    """The reference decoder of a parsed batch: checks field by field, raising at the first bad one."""
    if not isinstance(body, dict):
        raise TelemetryWireError(f"telemetry payload must be a JSON object, got {type(body).__name__}")
    if body.get("schema") != wire.SCHEMA or body.get("kind") != "telemetry":
        raise TelemetryWireError(
            f"expected schema {wire.SCHEMA} kind 'telemetry', got {body.get('schema')!r} {body.get('kind')!r}"
        )
    _only(body, {"schema", "kind", "device_id", "stream", "seq", "sent_at", "hardware_class", "update_state",
                 "dropped_points", "rolled_up_points", "points", "capture"}, "batch")
    device_id = _text(body, "device_id")
    if not wire.is_device_id(device_id):
        raise TelemetryWireError(f"device_id {device_id!r:.80} is not a valid device id")
    stream = _text(body, "stream")
    if not wire.STREAM_RE.match(stream):
        raise TelemetryWireError(f"stream must be 8-64 lowercase hex digits, got {stream!r:.80}")
    points_raw = body.get("points")
    if not isinstance(points_raw, list) or not 0 < len(points_raw) <= MAX_POINTS:
        raise TelemetryWireError(f"points must be a list of 1..{MAX_POINTS} points")
    try:
        capture = None if body.get("capture") is None else counts_from_dict(body["capture"])
    except CaptureCountsError as e:
        raise TelemetryWireError(str(e)) from e
    return TelemetryBatch(
        device_id=device_id,
        stream=stream,
        seq=_count(body, "seq"),
        sent_at=_number(body, "sent_at"),
        points=tuple(point_from_dict(p, i) for i, p in enumerate(points_raw)),
        hardware_class=_opt_text(body, "hardware_class"),
        update_state=_opt_text(body, "update_state"),
        dropped_points=_count(body, "dropped_points"),
        rolled_up_points=_count(body, "rolled_up_points"),
        capture=capture,
    )


def point_from_dict(raw: Any, index: int = 0) -> Point:
    where = f"points[{index}]"
    if not isinstance(raw, dict):
        raise TelemetryWireError(f"{where} must be an object")
    _only(raw, {"start_s", "end_s", "resolution_s", "samples", "system", "models"}, where)
    start_s, end_s = _number(raw, "start_s", where), _number(raw, "end_s", where)
    if not end_s >= start_s:
        raise TelemetryWireError(f"{where}: end_s {end_s} is before start_s {start_s}")
    resolution_s = _count(raw, "resolution_s", where)
    if not (1 <= resolution_s <= 600 or resolution_s in ALLOWED_RESOLUTIONS_S):
        raise TelemetryWireError(f"{where}.resolution_s must be 1..600, 60 or 3600, got {resolution_s}")
    system_raw = raw.get("system")
    if not isinstance(system_raw, dict):
        raise TelemetryWireError(f"{where}.system must be an object")
    _only(system_raw, {"cpu_pct", "mem_used_mb", "mem_total_mb", "disk_used_pct", "temps_c"}, f"{where}.system")
    temps_raw = system_raw.get("temps_c", {})
    if not isinstance(temps_raw, dict) or len(temps_raw) > MAX_ZONES:
        raise TelemetryWireError(f"{where}.system.temps_c must be an object of at most {MAX_ZONES} zones")
    temps: dict[str, float] = {}
    for zone, value in temps_raw.items():
        if len(zone) > 64 or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TelemetryWireError(f"{where}.system.temps_c[{zone[:40]!r}] must be a number")
        if not -100.0 <= value <= 250.0:
            raise TelemetryWireError(f"{where}.system.temps_c[{zone[:40]!r}] = {value} is not a temperature")
        temps[zone] = float(value)
    system = SystemSample(
        cpu_pct=_opt_number(system_raw, "cpu_pct", f"{where}.system"),
        mem_used_mb=_opt_number(system_raw, "mem_used_mb", f"{where}.system"),
        mem_total_mb=_opt_number(system_raw, "mem_total_mb", f"{where}.system"),
        disk_used_pct=_opt_number(system_raw, "disk_used_pct", f"{where}.system"),
        temps_c=temps,
    )
    models_raw = raw.get("models", [])
    if not isinstance(models_raw, list) or len(models_raw) > MAX_MODELS_PER_POINT:
        raise TelemetryWireError(f"{where}.models must be a list of at most {MAX_MODELS_PER_POINT}")
    models = []
    for j, m in enumerate(models_raw):
        mwhere = f"{where}.models[{j}]"
        if not isinstance(m, dict):
            raise TelemetryWireError(f"{mwhere} must be an object")
        _only(m, {"model", "version", "variant", "requests", "errors", "latency"}, mwhere)
        try:
            latency = LatencyHistogram.from_wire(m.get("latency"))  # type: ignore[arg-type]
        except HistogramError as e:
            raise TelemetryWireError(f"{mwhere}.latency: {e}") from e
        requests, errors = _count(m, "requests", mwhere), _count(m, "errors", mwhere)
        if errors > requests:
            raise TelemetryWireError(f"{mwhere}: errors {errors} exceed requests {requests}")
        models.append(ModelSample(_text(m, "model", mwhere), _text(m, "version", mwhere),
                                  _text(m, "variant", mwhere), requests, errors, latency))
    return Point(start_s, end_s, resolution_s, system, tuple(models), _count(raw, "samples", where))


def _reject_constant(name: str) -> Any:
    raise TelemetryWireError(f"{name} is not allowed in payloads")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)  # built once: json.loads(..., **kw) builds one a call


def _only(body: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(body) - allowed
    if extra:
        raise TelemetryWireError(f"{where}: unexpected fields {sorted(extra)[:8]}")


def _text(body: Mapping[str, Any], key: str, where: str = "batch") -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 128:
        raise TelemetryWireError(f"{where}.{key} must be a string of 1..128 chars, got {value!r:.60}")
    return value


def _opt_text(body: Mapping[str, Any], key: str) -> str | None:
    return None if body.get(key) is None else _text(body, key)


def _count(body: Mapping[str, Any], key: str, where: str = "batch") -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise TelemetryWireError(f"{where}.{key} must be a non-negative integer, got {value!r:.40}")
    return value


def _number(body: Mapping[str, Any], key: str, where: str = "batch") -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise TelemetryWireError(f"{where}.{key} must be a finite number, got {value!r:.40}")
    return float(value)


def _opt_number(body: Mapping[str, Any], key: str, where: str) -> float | None:
    if body.get(key) is None:
        return None
    value = _number(body, key, where)
    if value < 0:
        raise TelemetryWireError(f"{where}.{key} must not be negative, got {value}")
    return value


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


# The fast path. `decode` spends most of its time here, once per message at the controller's ingest
# rate, so a well-formed batch is checked with exact type tests, local names and no per-field
# messages; anything it does not accept (None) goes to `batch_from_dict`, which either refuses it
# with the field's message or, for a lenient form (an int subclass, a non-canonical bucket key),
# accepts it. Accepting only a subset of what the reference accepts, with the same values, is what
# tests/telemetry/test_wire_fastpath.py checks.

_BATCH_KEYS = frozenset({"schema", "kind", "device_id", "stream", "seq", "sent_at", "hardware_class",
                         "update_state", "dropped_points", "rolled_up_points", "points", "capture"})
_POINT_KEYS = frozenset({"start_s", "end_s", "resolution_s", "samples", "system", "models"})
_SYSTEM_KEYS = frozenset({"cpu_pct", "mem_used_mb", "mem_total_mb", "disk_used_pct", "temps_c"})
_MODEL_KEYS = frozenset({"model", "version", "variant", "requests", "errors", "latency"})
_MAX_COUNT = 2**53
_MAX_EXACT_INT = 2**1023  # below this an int converts to a finite float
_INF = math.inf
_EMPTY: dict[str, Any] = {}
_NO_MODELS: list[Any] = []


def fast_batch(body: dict[str, Any]) -> TelemetryBatch | None:
    """The batch, if `body` passes every check with plain JSON types; None to take the strict path."""
    get = body.get
    if get("schema") != wire.SCHEMA or get("kind") != "telemetry" or not body.keys() <= _BATCH_KEYS:
        return None
    device_id, stream, seq = get("device_id"), get("stream"), get("seq")
    hardware_class, update_state = get("hardware_class"), get("update_state")
    dropped, rolled_up, sent_at = get("dropped_points"), get("rolled_up_points"), get("sent_at")
    points_raw = get("points")
    if (type(device_id) is not str or not 0 < len(device_id) <= 128 or not wire.is_device_id(device_id)
            or type(stream) is not str or not 0 < len(stream) <= 128 or not wire.STREAM_RE.match(stream)
            or type(seq) is not int or not 0 <= seq < _MAX_COUNT
            or type(dropped) is not int or not 0 <= dropped < _MAX_COUNT
            or type(rolled_up) is not int or not 0 <= rolled_up < _MAX_COUNT
            or (hardware_class is not None and (type(hardware_class) is not str
                                                or not 0 < len(hardware_class) <= 128))
            or (update_state is not None and (type(update_state) is not str or not 0 < len(update_state) <= 128))
            or type(points_raw) is not list or not 0 < len(points_raw) <= MAX_POINTS):
        return None
    sent_at_s = _fast_number(sent_at)
    if sent_at_s is None:
        return None
    capture_raw = get("capture")
    capture = None if capture_raw is None else fast_counts(capture_raw)
    if capture_raw is not None and capture is None:
        return None
    points = []
    for raw in points_raw:
        point = _fast_point(raw)
        if point is None:
            return None
        points.append(point)
    return TelemetryBatch(device_id, stream, seq, sent_at_s, tuple(points), hardware_class, update_state,
                          dropped, rolled_up, capture)


def _fast_number(value: object) -> float | None:
    if type(value) is float:
        return value if -_INF < value < _INF else None
    if type(value) is int and -_MAX_EXACT_INT < value < _MAX_EXACT_INT:
        return float(value)
    return None


def _fast_opt_measure(value: object) -> float | None | bool:
    """A non-negative finite number, None for an absent one, False when it is not acceptable."""
    if value is None:
        return None
    number = _fast_number(value)
    return False if number is None or number < 0 else number


def _fast_point(raw: object) -> Point | None:
    if type(raw) is not dict or not raw.keys() <= _POINT_KEYS:
        return None
    get = raw.get
    start_s, end_s = _fast_number(get("start_s")), _fast_number(get("end_s"))
    resolution_s, samples, system_raw = get("resolution_s"), get("samples"), get("system")
    models_raw = get("models", _NO_MODELS)
    if (start_s is None or end_s is None or not end_s >= start_s
            or type(resolution_s) is not int or not (1 <= resolution_s <= 600 or resolution_s in ALLOWED_RESOLUTIONS_S)
            or type(samples) is not int or not 0 <= samples < _MAX_COUNT
            or type(system_raw) is not dict or not system_raw.keys() <= _SYSTEM_KEYS
            or type(models_raw) is not list or len(models_raw) > MAX_MODELS_PER_POINT):
        return None
    sget = system_raw.get
    temps_raw = sget("temps_c", _EMPTY)
    if type(temps_raw) is not dict or len(temps_raw) > MAX_ZONES:
        return None
    temps: dict[str, float] = {}
    for zone, value in temps_raw.items():
        if type(zone) is not str or len(zone) > 64 or (type(value) is not float and type(value) is not int):
            return None
        if not -100.0 <= value <= 250.0:
            return None
        temps[zone] = float(value)
    cpu, used, total, disk = (_fast_opt_measure(sget("cpu_pct")), _fast_opt_measure(sget("mem_used_mb")),
                              _fast_opt_measure(sget("mem_total_mb")), _fast_opt_measure(sget("disk_used_pct")))
    if cpu is False or used is False or total is False or disk is False:
        return None
    models = []
    for m in models_raw:
        if type(m) is not dict or not m.keys() <= _MODEL_KEYS:
            return None
        mget = m.get
        latency = LatencyHistogram.from_wire_fast(mget("latency"))
        name, version, variant = mget("model"), mget("version"), mget("variant")
        requests, errors = mget("requests"), mget("errors")
        if (latency is None or type(requests) is not int or not 0 <= requests < _MAX_COUNT
                or type(errors) is not int or not 0 <= errors <= requests
                or type(name) is not str or not 0 < len(name) <= 128
                or type(version) is not str or not 0 < len(version) <= 128
                or type(variant) is not str or not 0 < len(variant) <= 128):
            return None
        models.append(ModelSample(name, version, variant, requests, errors, latency))
    return Point(start_s, end_s, resolution_s, SystemSample(cpu, used, total, disk, temps), tuple(models), samples)
