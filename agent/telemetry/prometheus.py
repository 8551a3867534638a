"""Agent-local Prometheus `/metrics` and the inference server's counters as a `ModelMetricsSource`.

`add_metrics_routes(app, models=…, system=…, telemetry=…)` mounts `GET /metrics` on the agent's aiohttp
application (one line in the server or daemon). The text exposition format is written by hand: it is
a few lines of code and spares the device the import of a client library.

Exported families (model labels: model, version, variant):

| name                                      | type      | what                                        |
|-------------------------------------------|-----------|---------------------------------------------|
| edgefleet_model_requests_total            | counter   | completed requests per loaded version       |
| edgefleet_model_errors_total              | counter   | requests failed inside the model            |
| edgefleet_model_latency_seconds           | histogram | end-to-end latency, 4 buckets per decade     |
| edgefleet_model_cancelled_in_queue_total{model} | counter | requests dropped unrun: the client went away while queued |
| edgefleet_system_cpu_percent, …_memory_used_bytes, …_disk_used_percent, …_temperature_celsius{zone} |
| edgefleet_telemetry_spooled_points, …_dropped_points_total, …_rolled_up_points_total, …_batches_sent_total |
| edgefleet_capture_samples_total{reason}, …_dropped_total{cause}, …_write_errors_total, …_discarded_total, …_spooled_bytes_total, …_uploaded_total, …_upload_failures_total, …_upload_rounds_failed_total, …_pending_samples, …_pending_bytes |

The text itself is written by `agent.telemetry.exposition`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agent.telemetry.capture_counts import CaptureCounts
from agent.telemetry.collector import ModelCounters, ModelMetricsSource, SystemSource, TelemetryLoop
from agent.telemetry.exposition import CONTENT_TYPE, render


class ServerModelMetrics:
    """`ModelMetricsSource` over the inference server's `ModelServer` (current and previous versions).

    The server mutates its counters on its event loop; from another thread (the telemetry loop) the
    copy is made on that loop, so a histogram is never read half-updated.
    """

    def __init__(self, models: Any, loop: asyncio.AbstractEventLoop | None = None, timeout_s: float = 2.0) -> None:
        self.models = models
        self.loop = loop
        self.timeout_s = timeout_s

    def model_counters(self) -> list[ModelCounters]:
        loop = self.loop
        if loop is None or not loop.is_running() or _on_loop(loop):
            return self.copy_now()

        async def copy() -> list[ModelCounters]:
            return self.copy_now()

        return asyncio.run_coroutine_threadsafe(copy(), loop).result(self.timeout_s)

    def copy_now(self) -> list[ModelCounters]:
        out = []
        for served in list(self.models.models.values()):
            for version in (served.current, served.previous):
                if version is None:
                    continue
                stats = version.stats
                out.append(ModelCounters(version.model, version.version, version.variant, stats.requests,
                                         stats.errors, stats.latency.copy(), version.loaded_at_s))
        return out

    def cancelled_in_queue(self) -> dict[str, int]:
        """Per model name: requests dropped from the batching queue because their client went away."""
        return {name: served.batcher.cancelled for name, served in list(self.models.models.items())}


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def add_metrics_routes(
    app: web.Application,
    *,
    models: ModelMetricsSource | None = None,
    system: SystemSource | None = None,
    telemetry: TelemetryLoop | None = None,
    capture: Callable[[], CaptureCounts | None] | None = None,
    path: str = "/metrics",
) -> None:
    """Mount `GET <path>` (Prometheus text format) on the agent's aiohttp application."""

    async def metrics(_request: web.Request) -> web.Response:
        counters = models.model_counters() if models is not None else []
        capture_counts = capture() if capture is not None else None
        cancelled = models.cancelled_in_queue() if isinstance(models, ServerModelMetrics) else None
        return web.Response(body=render(counters, system, telemetry, capture_counts, cancelled).encode(),
                            headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get(path, metrics)
