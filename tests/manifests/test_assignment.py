"""The assignment document: canonical form, strict parsing, every refusal names its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from manifests import assignment as A
from manifests import canonical
from manifests.errors import Reason, TrustError
from tests.manifests.assignments import sample


def test_round_trip_is_canonical() -> None:
    a = sample()
    data = A.encode(a)
    assert A.decode(data) == a
    assert data == canonical.encode(json.loads(data))  # sorted keys, no whitespace
    assert json.loads(data)["schema"] == 1


def test_plain_json_with_whitespace_decodes_to_the_same_value() -> None:
    a = sample()
    pretty = json.dumps(json.loads(A.encode(a)), indent=2).encode()
    assert A.decode(pretty) == a


def body(**changes: Any) -> dict[str, Any]:
    raw = A.to_dict(sample())
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "reason", "words"),
    [
        ({"schema": 2}, Reason.SCHEMA_UNSUPPORTED, "schema"),
        ({"surprise": 1}, Reason.MALFORMED, "unknown fields"),
        ({"version": "3"}, Reason.MALFORMED, "version"),
        ({"version": 0}, Reason.MALFORMED, "version"),
        ({"version": True}, Reason.MALFORMED, "version"),
        ({"device_id": "../x"}, Reason.MALFORMED, "device_id"),
        ({"expires_at": "tomorrow"}, Reason.MALFORMED, "expires_at"),
        ({"expires_at": "2026-11-24T11:00:00Z"}, Reason.MALFORMED, "expires_at must be after"),
        ({"targets": []}, Reason.MALFORMED, "targets"),
        (
            {"targets": [{"name": "models/other/2/x.onnx", "length": 1, "sha256": "ab" * 32}]},
            Reason.MALFORMED,
            "not part of release",
        ),
        (
            {"targets": [{"name": "models/digits/2/x.onnx", "length": 1, "sha256": "AB" * 32}]},
            Reason.MALFORMED,
            "sha256",
        ),
        (
            {"targets": [{"name": "models/digits/2/x.onnx", "length": -1, "sha256": "ab" * 32}]},
            Reason.MALFORMED,
            "length",
        ),
        ({"gate": {"min_accuracy": 1.5}}, Reason.MALFORMED, "gate.min_accuracy"),
        ({"gate": {"allow_int8": "yes"}}, Reason.MALFORMED, "gate.allow_int8"),
        ({"gate": {"max_accuracy_drop": 1.5}}, Reason.MALFORMED, "gate.max_accuracy_drop"),
        ({"gate": {"max_accuracy_drop": -0.1}}, Reason.MALFORMED, "gate.max_accuracy_drop"),
        ({"gate": {"max_accuracy_drop": "0.1"}}, Reason.MALFORMED, "gate.max_accuracy_drop"),
        ({"probation": {"window_s": -1}}, Reason.MALFORMED, "probation.window_s"),
        ({"probation": {"max_error_rate": None}}, Reason.MALFORMED, "may not be null"),
        ({"probation": {"max_confidence_drop": 1.01}}, Reason.MALFORMED, "probation.max_confidence_drop"),
        ({"probation": {"max_confidence_drop": -0.01}}, Reason.MALFORMED, "probation.max_confidence_drop"),
        ({"probation": {"max_confidence_drop": float("nan")}}, Reason.MALFORMED, "finite"),
        ({"probation": {"max_confidence_drop": float("inf")}}, Reason.MALFORMED, "finite"),
        ({"probation": {"max_confidence_drop": "0.1"}}, Reason.MALFORMED, "probation.max_confidence_drop"),
        ({"probation": {"max_confidence_drop": True}}, Reason.MALFORMED, "probation.max_confidence_drop"),
        ({"probation": {"window_s": float("nan")}}, Reason.MALFORMED, "probation.window_s"),
        ({"probation": {"window_s": 10**400}}, Reason.MALFORMED, "probation.window_s"),
        ({"capture": {"max_samples_per_hour": 1.5}}, Reason.MALFORMED, "capture.max_samples_per_hour"),
        ({"capture": {"bogus": 1}}, Reason.MALFORMED, "unknown fields"),
        ({"type": "status"}, Reason.MALFORMED, "type"),
    ],
)
def test_refusals_name_the_field(changes: dict[str, Any], reason: Reason, words: str) -> None:
    with pytest.raises(TrustError) as info:
        A.from_dict(body(**changes))
    assert info.value.reason is reason
    assert words in str(info.value)


def test_missing_policies_take_defaults() -> None:
    raw = body()
    for key in ("gate", "probation", "capture", "rollout_id"):
        del raw[key]
    a = A.from_dict(raw)
    assert a.gate == A.GatePolicy() and a.capture == A.CapturePolicy() and a.rollout_id is None


def test_accuracy_drop_is_signed_only_when_it_departs_from_the_default() -> None:
    """Old documents (no field) read as the default 0.02; ordinary assignments encode exactly as before,
    so agents that predate the field accept them; a waiver (null) or another limit is written out."""
    plain = json.loads(A.encode(sample()))
    assert "max_accuracy_drop" not in plain["gate"]
    assert A.decode(A.encode(sample())).gate.max_accuracy_drop == 0.02
    for drop in (None, 0.1, 0.0):
        a = sample(gate=A.GatePolicy(min_accuracy=0.9, max_accuracy_drop=drop))
        data = A.encode(a)
        assert json.loads(data)["gate"]["max_accuracy_drop"] == drop
        assert A.decode(data) == a
        assert data == canonical.encode(json.loads(data))
    explicit = body(gate={**plain["gate"], "max_accuracy_drop": 0.02})
    assert A.from_dict(explicit) == sample()


def test_confidence_drop_is_signed_only_when_set() -> None:
    """Absent or null reads as None (not judged); ordinary assignments encode exactly as before the
    field existed, so older agents accept them; a limit is written out and survives the round trip."""
    plain = json.loads(A.encode(sample()))
    assert "max_confidence_drop" not in plain["probation"]
    assert A.decode(A.encode(sample())).probation.max_confidence_drop is None
    assert A.from_dict(body(probation={**plain["probation"], "max_confidence_drop": None})) == sample()
    for drop in (0.0, 0.15, 1, 1.0):
        a = sample(probation=A.ProbationPolicy(window_s=60.0, max_confidence_drop=drop))
        data = A.encode(a)
        assert json.loads(data)["probation"]["max_confidence_drop"] == drop
        decoded = A.decode(data)
        assert decoded == a and isinstance(decoded.probation.max_confidence_drop, float)
        assert data == canonical.encode(json.loads(data))


def test_a_signer_cannot_encode_a_non_finite_policy() -> None:
    with pytest.raises(TrustError, match="probation.max_confidence_drop must be a finite number"):
        A.encode(sample(probation=A.ProbationPolicy(max_confidence_drop=float("nan"))))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": 1, "a": 2}', Reason.MALFORMED),
        (b'{"a": NaN}', Reason.MALFORMED),
        (b"[1, 2]", Reason.MALFORMED),
        (b"\xff\xfe", Reason.MALFORMED),
        (b"[" * 100000, Reason.OVERSIZED),
    ],
)
def test_parser_refuses_ambiguous_or_oversized_json(data: bytes, reason: Reason) -> None:
    with pytest.raises(TrustError) as info:
        canonical.decode(data, max_bytes=64 * 1024, what="doc")
    assert info.value.reason is reason


def test_deeply_nested_json_within_budget_is_malformed_not_a_crash() -> None:
    with pytest.raises(TrustError) as info:
        A.decode(b"[" * 50000 + b"]" * 50000, max_bytes=200_000)
    assert info.value.reason is Reason.MALFORMED


def test_encoder_refuses_to_sign_an_invalid_document() -> None:
    with pytest.raises(TrustError):
        A.encode(sample(targets=()))
