"""Prometheus text exposition of agent metrics, without aiohttp (the controller reuses `histogram_lines`).

The histogram's `le` edges are every fifth edge of the fixed log-bucket layout, so the cumulative
counts are exact (no interpolation) and the series count stays small.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from agent.metrics.histogram import EDGES_S, LatencyHistogram
from agent.telemetry.capture_counts import CAPTURE_REASONS, CaptureCounts
from agent.telemetry.collector import ModelCounters, SystemSource, TelemetryLoop

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_EDGE_STEP = 5  # 20 buckets per decade in the histogram, 4 per decade in the exposition


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items()) + "}"


def histogram_lines(name: str, hist: LatencyHistogram, **labels: str) -> list[str]:
    lines = []
    cumulative = 0
    edges = list(range(0, len(EDGES_S), _EDGE_STEP))  # 1e-6, 1.78e-6, 3.16e-6, 5.62e-6, 1e-5, …
    last = -1
    for edge_index in edges:
        cumulative += sum(hist.counts[last + 1 : edge_index + 1])
        last = edge_index
        lines.append(f"{name}_bucket{_labels(**labels, le=f'{EDGES_S[edge_index]:.6g}')} {cumulative}")
    lines.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {hist.count}")
    lines.append(f"{name}_sum{_labels(**labels)} {hist.sum_s!r}")
    lines.append(f"{name}_count{_labels(**labels)} {hist.count}")
    return lines


def render(models: Iterable[ModelCounters] = (), system: SystemSource | None = None,
           telemetry: TelemetryLoop | None = None, capture: CaptureCounts | None = None,
           cancelled_in_queue: Mapping[str, int] | None = None) -> str:
    out: list[str] = []
    counters = list(models)
    if counters:
        out += ["# HELP edgefleet_model_requests_total Completed inference requests per loaded version.",
                "# TYPE edgefleet_model_requests_total counter"]
        out += [f"edgefleet_model_requests_total{_labels(**_model_labels(c))} {c.requests}" for c in counters]
        out += ["# HELP edgefleet_model_errors_total Requests that failed inside the model.",
                "# TYPE edgefleet_model_errors_total counter"]
        out += [f"edgefleet_model_errors_total{_labels(**_model_labels(c))} {c.errors}" for c in counters]
        out += ["# HELP edgefleet_model_latency_seconds End-to-end inference latency.",
                "# TYPE edgefleet_model_latency_seconds histogram"]
        for c in counters:
            out += histogram_lines("edgefleet_model_latency_seconds", c.latency, **_model_labels(c))
    if cancelled_in_queue:
        out += ["# HELP edgefleet_model_cancelled_in_queue_total Requests dropped before they ran: "
                "the client disconnected while they were queued.",
                "# TYPE edgefleet_model_cancelled_in_queue_total counter"]
        out += [f"edgefleet_model_cancelled_in_queue_total{_labels(model=m)} {n}"
                for m, n in sorted(cancelled_in_queue.items())]
    if system is not None:
        s = system.sample()
        for name, value, kind in (
            ("edgefleet_system_cpu_percent", s.cpu_pct, "CPU use since the previous reading."),
            ("edgefleet_system_memory_used_bytes", None if s.mem_used_mb is None else s.mem_used_mb * 1e6,
             "Memory in use (total - available)."),
            ("edgefleet_system_disk_used_percent", s.disk_used_pct, "Disk use of the agent's filesystem."),
        ):
            if value is not None:
                out += [f"# HELP {name} {kind}", f"# TYPE {name} gauge", f"{name} {value!r}"]
        if s.temps_c:
            out += ["# HELP edgefleet_system_temperature_celsius Thermal zone readings.",
                    "# TYPE edgefleet_system_temperature_celsius gauge"]
            out += [f"edgefleet_system_temperature_celsius{_labels(zone=z)} {t!r}" for z, t in s.temps_c.items()]
    if telemetry is not None:
        spool = telemetry.spool
        for name, value, kind, help_text in (
            ("edgefleet_telemetry_spooled_points", len(spool), "gauge", "Points waiting in the spool."),
            ("edgefleet_telemetry_dropped_points_total", spool.dropped_points, "counter",
             "Points discarded because the spool was full after roll-ups."),
            ("edgefleet_telemetry_rolled_up_points_total", spool.rolled_up_points, "counter",
             "Points merged into coarser ones while the spool was full."),
            ("edgefleet_telemetry_batches_sent_total", telemetry.batches_sent, "counter",
             "Telemetry batches handed to the MQTT outbox."),
        ):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    if capture is not None:
        out += capture_lines(capture)
    return "\n".join(out) + "\n"


_DROP_CAUSES = ("hourly_budget", "daily_budget", "spool_full", "backlog")


def capture_lines(c: CaptureCounts) -> list[str]:
    """Sample-capture families; the labelled ones list every label value, zeros included."""
    counts = c.counters()
    out = ["# HELP edgefleet_capture_samples_total Inference rows kept and spooled for retraining, by reason.",
           "# TYPE edgefleet_capture_samples_total counter"]
    out += [f"edgefleet_capture_samples_total{_labels(reason=r)} {counts['captured_' + r]}" for r in CAPTURE_REASONS]
    out += ["# HELP edgefleet_capture_dropped_total Rows or samples dropped: budgets, the spool bound, "
            "a full writer queue.",
            "# TYPE edgefleet_capture_dropped_total counter"]
    out += [f"edgefleet_capture_dropped_total{_labels(cause=k)} {counts['dropped_' + k]}" for k in _DROP_CAUSES]
    for name, value, kind, help_text in (
        ("edgefleet_capture_write_errors_total", c.write_errors, "counter", "Kept rows the spool could not write."),
        ("edgefleet_capture_discarded_total", c.discarded_by_policy, "counter",
         "Samples deleted unsent because capture was switched off."),
        ("edgefleet_capture_spooled_bytes_total", c.spooled_bytes, "counter", "Bytes written to the capture spool."),
        ("edgefleet_capture_uploaded_total", c.uploaded, "counter", "Samples the controller confirmed."),
        ("edgefleet_capture_upload_failures_total", c.upload_failures, "counter", "Sample uploads (PUT) that failed."),
        ("edgefleet_capture_upload_rounds_failed_total", c.upload_rounds_failed, "counter",
         "Upload rounds that confirmed nothing."),
        ("edgefleet_capture_pending_samples", c.pending, "gauge", "Samples waiting in the spool for upload."),
        ("edgefleet_capture_pending_bytes", c.pending_bytes, "gauge", "Bytes waiting in the spool for upload."),
    ):
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return out


def _model_labels(c: ModelCounters) -> dict[str, str]:
    return {"model": c.model, "version": c.version, "variant": c.variant}
