"""Telemetry for the daemon: the `agent.telemetry` loop fed by the lazily started inference server.

The telemetry loop samples the system from the start; model counters exist only once the server
runs, so `LazyModelMetrics` answers "no models" until then instead of starting it. `/metrics` is
mounted on the inference server's own aiohttp application when that starts (an agent serving
nothing has no HTTP endpoint, and Prometheus sees it down, which is what it is for applications).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agent.daemon.config import DaemonConfig
from agent.daemon.serving import LazyServing
from agent.mqtt import AgentSession
from agent.telemetry import (
    CaptureCounts,
    ModelCounters,
    SessionChannel,
    SystemSampler,
    TelemetryConfig,
    TelemetryLoop,
    TelemetrySpool,
)


class LazyModelMetrics:
    """`ModelMetricsSource` over the server once it runs; empty before."""

    def __init__(self, serving: LazyServing) -> None:
        self.serving = serving

    def model_counters(self) -> list[ModelCounters]:
        models, loop = self.serving.models, self.serving.loop
        if models is None:
            return []
        from agent.telemetry.prometheus import ServerModelMetrics

        return ServerModelMetrics(models, loop).model_counters()


def build_telemetry(config: DaemonConfig, session: AgentSession, serving: LazyServing,
                    update_state: Callable[[], str | None], system: SystemSampler,
                    capture: Callable[[], CaptureCounts | None] | None = None) -> TelemetryLoop:
    loop_config = TelemetryConfig(device_id=config.device_id, sample_every_s=config.telemetry_sample_every_s,
                                  batch_every_s=config.telemetry_batch_every_s)
    spool = TelemetrySpool(config.state_dir / "telemetry", max_points=config.telemetry_max_points)
    return TelemetryLoop(loop_config, spool, SessionChannel(session), system, LazyModelMetrics(serving),
                         update_state, capture=capture)


def set_hardware_class(loop: TelemetryLoop, hardware_class: str) -> None:
    """Known only after the hardware probe; batches built from then on carry it."""
    loop.config = replace(loop.config, hardware_class=hardware_class)


def mount_metrics(app: Any, models: Any, loop: asyncio.AbstractEventLoop, system: SystemSampler,
                  telemetry: TelemetryLoop | None,
                  capture: Callable[[], CaptureCounts | None] | None = None) -> None:
    """`GET /metrics` (Prometheus text) on the inference server's application, before it starts."""
    from agent.telemetry.prometheus import ServerModelMetrics, add_metrics_routes

    add_metrics_routes(app, models=ServerModelMetrics(models, loop), system=system, telemetry=telemetry,
                       capture=capture)
