"""A valid assignment to start from; tests change one field at a time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from manifests import assignment as A

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)


def sample(**changes: Any) -> A.Assignment:
    base = dict(
        device_id="edge-001",
        version=3,
        issued_at=T0,
        expires_at=T0 + timedelta(days=1),
        release=A.ReleaseRef("digits", "2"),
        targets=(A.TargetPin("models/digits/2/ort-fp32.onnx", 1234, "ab" * 32),),
        gate=A.GatePolicy(min_accuracy=0.9, max_latency_p95_ms=12.5),
        probation=A.ProbationPolicy(window_s=60.0),
        capture=A.CapturePolicy(enabled=True, random_rate=0.01, max_samples_per_hour=100),
        rollout_id="r-7",
    )
    base.update(changes)
    return A.Assignment(**base)
