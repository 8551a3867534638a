"""The status/event/presence wire formats: round trips and refusals, one row per rule."""

from __future__ import annotations

import json

import pytest

from agent import wire

STREAM = "0123456789abcdef"


def _event(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "schema": 1, "kind": "event", "device_id": "dev-1", "stream": STREAM, "seq": 3, "sent_at": 1.5,
        "event": "gate_failed", "assignment_version": 7, "rollout_id": "r1", "model": "m", "version": "2",
        "reason": "accuracy", "details": {"accuracy": 0.5, "ok": False, "note": "x", "none": None},
    }
    body.update(overrides)
    return body


def test_round_trip_of_every_message_kind() -> None:
    messages: list[wire.Message] = [
        wire.Status("dev-1", STREAM, 0, 10.0, "IDLE", wire.ActiveModel("m", "1", "ort-fp32", "a" * 64), 4, "r", None),
        wire.Event("dev-1", STREAM, 1, 11.0, "gate_passed", 4, "r", "m", "1", None, {"p95_ms": 1.25}),
        wire.Presence("dev-1", "offline", "0.1.0"),
    ]
    for message in messages:
        assert wire.decode(wire.encode(message)) == message


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xff\xfe", "UTF-8 JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps(_event(schema=2)).encode(), "expected schema 1"),
        (json.dumps(_event(kind="bogus")).encode(), "kind must be"),
        (json.dumps(_event(event="exploded")).encode(), "event must be one of"),
        (json.dumps(_event(seq=-1)).encode(), "seq must be a non-negative integer"),
        (json.dumps(_event(seq=True)).encode(), "seq must be a non-negative integer"),
        (json.dumps(_event(device_id="a/b")).encode(), "device_id"),
        (json.dumps(_event(device_id="+")).encode(), "device_id"),
        (json.dumps(_event(stream="XYZ")).encode(), "stream must be"),
        (json.dumps(_event(extra=1)).encode(), "unexpected fields"),
        (json.dumps(_event(details={"k": [1]})).encode(), "details['k']"),
        (json.dumps(_event(details={f"k{i}": i for i in range(100)})).encode(), "at most 64"),
        (b'{"schema": 1, "kind": "event", "sent_at": NaN}', "NaN is not allowed"),
        (json.dumps(_event(sent_at="now")).encode(), "sent_at"),
        (b"{" * 100_000, "limit"),
        (json.dumps({"schema": 1, "kind": "presence", "device_id": "d", "state": "asleep"}).encode(), "presence"),
    ],
)
def test_decode_refuses(payload: bytes, fragment: str) -> None:
    with pytest.raises(wire.WireError, match=None) as info:
        wire.decode(payload)
    assert fragment in str(info.value)


def test_deeply_nested_json_is_a_wire_error_not_a_crash() -> None:
    with pytest.raises(wire.WireError):
        wire.decode(b"[" * 60_000 + b"]" * 60_000, max_bytes=200_000)


def test_topics() -> None:
    assert wire.topic("dev-1", "status") == "edgefleet/v1/dev-1/status"
    assert wire.parse_topic("edgefleet/v1/dev-1/events") == ("dev-1", "events")
    for bad in ("edgefleet/v1/+/status", "edgefleet/v2/d/status", "edgefleet/v1/d/x/y", "x"):
        with pytest.raises(wire.WireError):
            wire.parse_topic(bad)
    with pytest.raises(wire.WireError):
        wire.topic("dev/../other", "status")


def test_encode_refuses_what_decode_would_refuse() -> None:
    with pytest.raises(wire.WireError):
        wire.encode(wire.Event("d", STREAM, 1, 1.0, "not_a_kind"))
