"""Device telemetry: system and model metrics, spooled on disk, published as sequence-numbered batches.

```
 psutil + sysfs thermal ─▶ SystemSampler ─┐
 inference server counters ─▶ ModelMetricsSource ─┤ every sample_every_s
                                                  ▼
                                   TelemetryLoop ─▶ TelemetrySpool (disk, bounded: roll up, then drop+count)
                                                  │ every batch_every_s, only while connected
                                                  ▼
                         AgentSession outbox (seq) ─▶ edgefleet/v1/<device>/telemetry (QoS 1)
 GET /metrics on the agent's aiohttp app ◀── add_metrics_routes (agent.telemetry.prometheus)
```

Modules: `wire` (the payload, shared with the controller), `system`, `points` (pure merges),
`spool`, `collector` (the loop and its ports), `prometheus` (imports aiohttp; import it explicitly).

Errors (see `agent.telemetry.errors`)::

    TelemetryError ── SpoolError
    agent.wire.WireError ── TelemetryWireError
"""

from __future__ import annotations

from agent.telemetry.capture_counts import CaptureCounts
from agent.telemetry.collector import (
    ModelCounters,
    ModelMetricsSource,
    SessionChannel,
    TelemetryChannel,
    TelemetryConfig,
    TelemetryLoop,
)
from agent.telemetry.errors import SpoolError, TelemetryError
from agent.telemetry.spool import TelemetrySpool
from agent.telemetry.system import SystemSampler, read_temperatures
from agent.telemetry.wire import TelemetryBatch, TelemetryWireError

__all__ = [
    "CaptureCounts",
    "ModelCounters",
    "ModelMetricsSource",
    "SessionChannel",
    "SpoolError",
    "SystemSampler",
    "TelemetryBatch",
    "TelemetryChannel",
    "TelemetryConfig",
    "TelemetryError",
    "TelemetryLoop",
    "TelemetrySpool",
    "TelemetryWireError",
    "read_temperatures",
]
