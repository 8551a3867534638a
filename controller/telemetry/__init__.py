"""Fleet telemetry on the controller: ingest, retention, latency queries, Prometheus.

```
 devices ─▶ broker ─$share/telemetry/…/+/telemetry─▶ TelemetrySubscriber ─▶ TelemetryWriter (validate,
                                                      (raw bytes to a deque)   dedupe, grouped transactions)
                                                                                   │
      /api/v1/telemetry/{devices/{id}/latency, latency, compare} ◀── queries ◀── telemetry_* tables
      /metrics ◀── prometheus (devices, rollouts, ingest counters, latency histograms)   ▲
                                                       retention: raw → 1 min → 1 h ────┘
```

Errors: malformed payloads are `agent.wire.WireError`s, counted and dropped; query arguments out of
range are `controller.errors.InvalidInput` (HTTP 422). This package defines no error tree of its own.
"""

from __future__ import annotations

from controller.telemetry.ingest import IngestConfig, TelemetrySubscriber, TelemetryWriter
from controller.telemetry.retention import RetentionPolicy, apply_retention
from controller.telemetry.service import TelemetryService

__all__ = [
    "IngestConfig",
    "RetentionPolicy",
    "TelemetryService",
    "TelemetrySubscriber",
    "TelemetryWriter",
    "apply_retention",
]
