"""Garbage from the broker: every byte string either parses or raises the package's own error.

Property tests (hypothesis) over the three strict parsers a device or the controller feeds with bytes
from MQTT: `agent.wire.decode` / `parse_topic` (status, event and presence payloads; topics), and
`manifests.canonical.decode` / `manifests.assignment.decode` (the signed assignment body). Inputs are
raw bytes, arbitrary JSON documents, and valid messages with one field replaced, dropped or added, so
the generator reaches the field validators rather than stopping at the JSON parser. Anything that
parses must survive a round trip unchanged: the parser never accepts what its encoder would refuse.

tests/manifests/test_fuzz.py covers the signed envelope (`check_assignment`) with random byte flips;
this file covers the parsers underneath it and the device-to-controller formats.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import wire
from manifests import assignment as A
from manifests import canonical
from manifests.errors import TrustError
from tests.manifests.assignments import sample

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
STREAM = "0123456789abcdef"

_FIELD_NAMES = [
    "schema", "kind", "device_id", "stream", "seq", "sent_at", "state", "active", "assignment_version",
    "rollout_id", "last_error", "event", "model", "version", "reason", "details", "agent_version",
    "variant", "sha256", "issued_at", "expires_at", "release", "targets", "gate", "probation", "capture",
    "name", "length", "min_accuracy", "window_s", "enabled", "random_rate",
]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80)
    | st.sampled_from(["status", "event", "presence", "online", "offline", "gate_failed", "dev-1", STREAM])
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=12), inner, max_size=6),
    max_leaves=25,
)


def _valid_wire_bodies() -> list[dict[str, Any]]:
    messages: list[wire.Message] = [
        wire.Status("dev-1", STREAM, 0, 10.0, "IDLE", wire.ActiveModel("m", "1", "ort-fp32", "a" * 64), 4, "r", None),
        wire.Event("dev-1", STREAM, 1, 11.0, "gate_passed", 4, "r", "m", "1", None, {"p95_ms": 1.25, "ok": True}),
        wire.Presence("dev-1", "online", "0.1.0"),
    ]
    return [json.loads(wire.encode(m)) for m in messages]


def _valid_assignment_body() -> dict[str, Any]:
    a = sample()
    body: dict[str, Any] = json.loads(A.encode(a))
    return body


@st.composite
def _mutated(draw: st.DrawFn, bases: list[dict[str, Any]]) -> bytes:
    """A valid document with one field (possibly nested one level) replaced, dropped or added."""
    doc = json.loads(json.dumps(draw(st.sampled_from(bases))))
    target = doc
    nested = [k for k, v in doc.items() if isinstance(v, dict)]
    if nested and draw(st.booleans()):
        target = doc[draw(st.sampled_from(sorted(nested)))]
    action = draw(st.sampled_from(["replace", "drop", "add"]))
    if action == "add" or not target:
        target[draw(st.sampled_from(_FIELD_NAMES) | st.text(max_size=8))] = draw(json_values)
    else:
        key = draw(st.sampled_from(sorted(target)))
        if action == "drop":
            del target[key]
        else:
            target[key] = draw(json_values)
    return json.dumps(doc).encode()


def _payloads(bases: list[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    return (
        st.binary(max_size=200)
        | json_values.map(lambda v: json.dumps(v).encode())
        | _mutated(bases)
        | st.sampled_from([b"NaN", b'{"seq": Infinity}', b"[" * 5000, b'{"a": 1, "a": 2}', b"\xff{}"])
    )


@FUZZ
@given(_payloads(_valid_wire_bodies()))
def test_wire_decode_returns_a_message_or_a_wire_error(data: bytes) -> None:
    try:
        message = wire.decode(data)
    except wire.WireError:
        return
    assert isinstance(message, (wire.Status, wire.Event, wire.Presence))
    assert wire.decode(wire.encode(message)) == message


@FUZZ
@given(st.text(alphabet=string.printable + "+#$/\x00é", max_size=80))
def test_parse_topic_returns_its_parts_or_a_wire_error(name: str) -> None:
    try:
        device_id, channel = wire.parse_topic(name)
    except wire.WireError:
        return
    assert wire.is_device_id(device_id)
    assert wire.topic(device_id, channel) == name


@FUZZ
@given(_payloads([_valid_assignment_body()]))
def test_canonical_decode_returns_an_object_or_a_trust_error(data: bytes) -> None:
    try:
        obj = canonical.decode(data, max_bytes=4096, what="document")
    except TrustError:
        return
    assert isinstance(obj, dict)
    assert canonical.decode(canonical.encode(obj), max_bytes=1 << 20, what="document") == obj


@FUZZ
@given(_payloads([_valid_assignment_body()]))
def test_assignment_decode_returns_an_assignment_or_a_trust_error(data: bytes) -> None:
    try:
        assignment = A.decode(data)
    except TrustError:
        return
    assert A.decode(A.encode(assignment)) == assignment


def test_the_generators_reach_acceptance() -> None:
    """Guards the properties against a generator that only ever produces refusals."""
    for body in _valid_wire_bodies():
        assert wire.decode(json.dumps(body).encode())
    assert A.decode(json.dumps(_valid_assignment_body()).encode())
