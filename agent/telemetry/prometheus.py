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
| edgefleet_system_cpu_percent, …_memory_used_bytes, …_disk_used_percent, …_temperature_celsius{zone} |
| edgefleet_telemetry_spooled_points, …_dropped_points_total, …_rolled_up_points_total, …_batches_sent_total |

The text itself is written by `agent.telemetry.exposition`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

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
    path: str = "/metrics",
) -> None:
    """Mount `GET <path>` (Prometheus text format) on the agent's aiohttp application."""

    async def metrics(_request: web.Request) -> web.Response:
        counters = models.model_counters() if models is not None else []
        return web.Response(body=render(counters, system, telemetry).encode(),
                            headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get(path, metrics)
