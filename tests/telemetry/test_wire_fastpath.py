"""The telemetry decoder's fast path against its reference: same batches, same refusals.

`agent.telemetry.wire.decode` tries `fast_batch` (exact JSON types, no per-field messages) and hands
anything it does not accept to `batch_from_dict`, the field-by-field reference. These properties hold
that split honest: for valid batches the fast path is taken and returns exactly what the reference
returns; for batches with one field replaced, dropped or added, `decode` gives the reference's batch or
the reference's error (type and message), and the fast path never accepts what the reference refuses.
The same holds for `LatencyHistogram.from_wire_fast` against `from_wire`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.metrics.histogram import N_BUCKETS, HistogramError, LatencyHistogram
from agent.telemetry import wire as twire

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

_finite = st.floats(allow_nan=False, allow_infinity=False)
_json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | _finite
    | st.floats(min_value=-1e6, max_value=1e6) | st.text(max_size=70)
    | st.sampled_from(["telemetry", "dev-1", "0123456789abcdef", "7", "007", "181", "182", "²", ""])
)
json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def histograms(draw: st.DrawFn) -> LatencyHistogram:
    h = LatencyHistogram()
    for value_s in draw(st.lists(st.floats(min_value=0.0, max_value=5000.0), max_size=30)):
        h.record(value_s)
    return h


@st.composite
def batches(draw: st.DrawFn) -> twire.TelemetryBatch:
    points = []
    for _ in range(draw(st.integers(1, 4))):
        start_s = draw(st.floats(min_value=0, max_value=4e9))
        system = twire.SystemSample(
            *(draw(st.none() | st.floats(min_value=0, max_value=1e7)) for _ in range(4)),
            temps_c=draw(st.dictionaries(st.text(max_size=64), st.floats(min_value=-100.0, max_value=250.0),
                                         max_size=4)),
        )
        models = []
        for _ in range(draw(st.integers(0, 3))):
            latency = draw(histograms())
            requests = draw(st.integers(0, 2**40))
            models.append(twire.ModelSample(draw(st.text(min_size=1, max_size=128)), draw(st.sampled_from(["1", "v2"])),
                                            "ort-fp32", requests, draw(st.integers(0, requests)), latency))
        points.append(twire.Point(start_s, start_s + draw(st.floats(min_value=0, max_value=3600)),
                                  draw(st.sampled_from([1, 10, 60, 600, 3600])), system, tuple(models),
                                  draw(st.integers(1, 1000))))
    return twire.TelemetryBatch(
        "dev-1", "0123456789abcdef", draw(st.integers(0, 2**53 - 1)), draw(_finite), tuple(points),
        draw(st.none() | st.just("jetson-orin")), draw(st.none() | st.just("IDLE")),
        draw(st.integers(0, 10)), draw(st.integers(0, 10)),
    )


def shape(value: Any) -> Any:
    """A comparable form that keeps types (1 and 1.0 differ), histograms included."""
    if isinstance(value, LatencyHistogram):
        return ("hist", shape(value.counts), shape(value.count), shape(value.sum_s), shape(value.max_s))
    if isinstance(value, (twire.TelemetryBatch, twire.Point, twire.SystemSample, twire.ModelSample)):
        return (type(value).__name__, *(shape(v) for v in vars(value).values()))
    if isinstance(value, (tuple, list)):
        return tuple(shape(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, shape(v)) for k, v in value.items()))
    return (type(value).__name__, value)


def outcome(fn: Any, arg: Any) -> Any:
    try:
        return ("ok", shape(fn(arg)))
    except Exception as e:  # noqa: BLE001 - the outcome compared is the exception's type and message
        return ("error", type(e).__name__, str(e))


def reference_decode(data: bytes) -> twire.TelemetryBatch:
    """`decode` without the fast path."""
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=twire._reject_constant)
    except (ValueError, RecursionError) as e:
        raise twire.TelemetryWireError(f"telemetry payload is not UTF-8 JSON: {e}") from e
    return twire.batch_from_dict(body)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def mutate(body: Any, path: tuple[Any, ...], op: str, new: Any, key: str) -> Any:
    if not path:
        return new if op == "replace" else body
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "replace":
        parent[last] = new
    elif op == "drop":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last][key] = new
    return body


@FUZZ
@given(batches())
def test_valid_batches_take_the_fast_path_and_match_the_reference(batch: twire.TelemetryBatch) -> None:
    data = twire.encode(batch)
    assert twire.fast_batch(json.loads(data)) is not None
    assert shape(twire.decode(data)) == shape(reference_decode(data)) == shape(batch)


@FUZZ
@given(batches(), st.data(), st.sampled_from(["replace", "drop", "add"]), json_values,
       st.sampled_from(["extra", "schema", "temps_c", "models", "latency", "counts", "sum_s", "0", "7"]))
def test_one_field_changed_decodes_or_fails_exactly_like_the_reference(
    batch: twire.TelemetryBatch, data: st.DataObject, op: str, new: Any, key: str
) -> None:
    body = json.loads(twire.encode(batch))
    path = data.draw(st.sampled_from(paths(body)))
    body = mutate(body, path, op, new, key)
    payload = json.dumps(body).encode()
    assert outcome(twire.decode, payload) == outcome(reference_decode, payload)
    parsed = json.loads(payload)
    if isinstance(parsed, dict) and twire.fast_batch(parsed) is not None:
        assert outcome(twire.fast_batch, json.loads(payload)) == outcome(twire.batch_from_dict, parsed)


@FUZZ
@given(histograms(), st.sampled_from(["replace", "drop", "add"]), json_values, st.data())
def test_fast_histogram_is_from_wire_or_declines(h: LatencyHistogram, op: str, new: Any, data: st.DataObject) -> None:
    raw = json.loads(json.dumps(h.to_wire()))
    assert shape(LatencyHistogram.from_wire_fast(raw)) == shape(LatencyHistogram.from_wire(raw)) == shape(h)
    raw = mutate(raw, data.draw(st.sampled_from(paths(raw))), op, new,
                 data.draw(st.sampled_from(["counts", "count", "7", "007", "181", "182", "-1", "x"])))
    fast = LatencyHistogram.from_wire_fast(raw)
    if fast is not None:
        assert shape(fast) == shape(LatencyHistogram.from_wire(raw))


def _valid_body() -> dict[str, Any]:
    h = LatencyHistogram()
    h.record(0.01)
    point = twire.Point(10.0, 20.0, 10, twire.SystemSample(1.0, temps_c={"cpu": 40.0}),
                        (twire.ModelSample("m", "1", "ort-fp32", 1, 0, h),))
    body: dict[str, Any] = json.loads(twire.encode(twire.TelemetryBatch("dev-1", "0123456789abcdef", 1, 20.0,
                                                                         (point,))))
    return body


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b["points"][0]["models"][0]["latency"]["counts"].update({"²": 1}), "bucket index out of range"),
    (lambda b: b["points"][0]["models"][0]["latency"].update({"sum_s": 10**400}), "sum_s must be"),
    (lambda b: b.update({"sent_at": 10**400}), "sent_at must be a finite number"),
    (lambda b: b["points"][0].update({"start_s": -(10**400)}), "start_s must be a finite number"),
])
def test_oversized_numbers_and_unicode_digits_are_wire_errors(change: Any, message: str) -> None:
    body = _valid_body()
    change(body)
    with pytest.raises(twire.TelemetryWireError, match=message):
        twire.decode(json.dumps(body).encode())


def test_an_integer_beyond_the_digit_limit_is_a_wire_error() -> None:
    payload = json.dumps(_valid_body()).replace('"seq": 1', '"seq": ' + "9" * 5000).encode()
    with pytest.raises(twire.TelemetryWireError, match="not UTF-8 JSON"):
        twire.decode(payload)


def test_bucket_keys_cover_the_layout() -> None:
    h = LatencyHistogram()
    h.counts = [1] * N_BUCKETS
    h.count = N_BUCKETS
    raw = json.loads(json.dumps(h.to_wire()))
    assert shape(LatencyHistogram.from_wire_fast(raw)) == shape(h)
    raw["counts"][str(N_BUCKETS)] = raw["counts"].pop("0")
    assert LatencyHistogram.from_wire_fast(raw) is None
    with pytest.raises(HistogramError, match="out of range"):
        LatencyHistogram.from_wire(raw)


_BAD_VALUES: list[Any] = [None, True, False, 0, 1, 2, -1, 0.5, -0.5, 1e300, 2**53, 10**400, "", "x", "7", "a" * 129,
                          [], [1], {}, {"x": 1}, 250.5, -100.5, 600, 601, 3600, 3601]


def _rich_body() -> dict[str, Any]:
    body = _valid_body()
    point = body["points"][0]
    point["system"].update({"mem_used_mb": 5.0, "mem_total_mb": 9.0, "disk_used_pct": 3.0})
    point["system"]["temps_c"]["gpu"] = 41
    point["models"].append(dict(point["models"][0], model="n"))
    body["points"].append(json.loads(json.dumps(point)))
    body.update(hardware_class="jetson-orin", update_state="IDLE")
    return body


@pytest.mark.parametrize("path", paths(_rich_body()), ids=lambda p: "/".join(map(str, p)) or "root")
def test_every_field_with_every_bad_value_fails_like_the_reference(path: tuple[Any, ...]) -> None:
    """Exhaustive over one body's fields: each replaced by each value of a list of boundary and wrong-type
    values, dropped, and given an unknown sibling; `decode` must match the reference every time."""
    variants = [mutate(_rich_body(), path, "replace", value, "") for value in _BAD_VALUES]
    variants += [mutate(_rich_body(), path, "drop", None, ""), mutate(_rich_body(), path, "add", 1, "extra")]
    for body in variants:
        payload = json.dumps(body).encode()
        assert outcome(twire.decode, payload) == outcome(reference_decode, payload), body
