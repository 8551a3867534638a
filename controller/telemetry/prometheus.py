"""The controller's Prometheus `/metrics` (viewer token: `authorization: {credentials: efo_…}` in the
scrape config).

| family                                         | type      | from                                     |
|------------------------------------------------|-----------|------------------------------------------|
| edgefleet_devices{hardware_class,model,version,online} | gauge | device registry                    |
| edgefleet_rollouts{state}                       | gauge     | the `rollouts` table, when it exists     |
| edgefleet_telemetry_batches_total, …_rejected_total, …_duplicates_total, …_dropped_total | counter | this replica's ingest |
| edgefleet_telemetry_backlog, …_lag_seconds      | gauge     | writer queue; receive → commit delay     |
| edgefleet_fleet_requests_total{model,version}, …_errors_total | counter | ingested by this replica   |
| edgefleet_fleet_latency_seconds{model,version}  | histogram | ingested by this replica (cumulative)    |
| edgefleet_capture_samples{model,count}, edgefleet_capture_bytes{model,count} | gauge | devices' newest capture counters |

Latency histograms are cumulative since this replica started, as Prometheus expects of a histogram;
with several replicas, `sum by (le, model, version)` gives the fleet (the shared subscription sends
each batch to one replica).

`edgefleet_capture_samples` (and `…_bytes` for `spooled_bytes`, `pending_bytes`) sums, per model the
devices run, the capture counters of each active device's current daemon run (its newest batch of the
last 15 minutes): `count` is a counter name of
`agent.telemetry.capture_counts` (`uploaded`, `dropped_spool_full`, …, `pending`). It is a gauge
because a device restart takes its share back to zero; per-device totals across restarts are on
`GET /api/v1/devices/{id}/capture`. One series per model and counter, never per device.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session

from agent.telemetry.exposition import CONTENT_TYPE, histogram_lines
from controller.api.deps import DbSession
from controller.auth import ViewerPrincipal
from controller.db.models import Device
from controller.telemetry.capture import fleet_current_by_model

router = APIRouter(tags=["telemetry"])


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                          for k, v in labels.items()) + "}"


def device_lines(db: Session) -> list[str]:
    out = ["# HELP edgefleet_devices Active devices by hardware class, model version and presence.",
           "# TYPE edgefleet_devices gauge"]
    query = (select(Device.hardware_class, Device.current_model, Device.current_version, Device.online,
                    func.count()).where(Device.status == "active")
             .group_by(Device.hardware_class, Device.current_model, Device.current_version, Device.online))
    for cls, model, version, online, count in db.execute(query):
        out.append(f"edgefleet_devices{_labels(hardware_class=cls or '', model=model or '', version=version or '', online=str(bool(online)).lower())} {count}")
    return out


def rollout_lines(db: Session) -> list[str]:
    if not inspect(db.get_bind()).has_table("rollouts"):
        return []
    out = ["# HELP edgefleet_rollouts Rollouts by state.", "# TYPE edgefleet_rollouts gauge"]
    for state, count in db.execute(text("SELECT state, count(*) FROM rollouts GROUP BY state")):
        out.append(f"edgefleet_rollouts{_labels(state=str(state))} {count}")
    return out


def capture_lines(db: Session) -> list[str]:
    by_model = sorted(fleet_current_by_model(db).items())
    out: list[str] = []
    for family, unit, is_bytes in (("edgefleet_capture_samples", "samples", False),
                                   ("edgefleet_capture_bytes", "bytes", True)):
        lines = [f"{family}{_labels(model=model, count=name)} {value}" for model, counts in by_model
                 for name, value in counts.items() if name.endswith("_bytes") == is_bytes]
        if lines:
            out += [f"# HELP {family} Sample-capture counters ({unit}) of devices' current runs, by model.",
                    f"# TYPE {family} gauge", *lines]
    return out


def ingest_lines(service: object | None) -> list[str]:
    if service is None:
        return []
    writer = service.writer  # type: ignore[attr-defined]
    subscriber = service.subscriber  # type: ignore[attr-defined]
    out: list[str] = []
    for name, value, kind, help_text in (
        ("edgefleet_telemetry_batches_total", writer.stats["batches"], "counter", "Telemetry batches stored."),
        ("edgefleet_telemetry_rejected_total", subscriber.stats["rejected"], "counter",
         "Malformed telemetry payloads dropped."),
        ("edgefleet_telemetry_duplicates_total", subscriber.stats["duplicates"] + writer.stats["duplicates"],
         "counter", "Redelivered batches skipped."),
        ("edgefleet_telemetry_dropped_total", writer.stats["dropped:backlog"] + writer.stats["write_errors"],
         "counter", "Batches lost to a full backlog or a failed write."),
        ("edgefleet_telemetry_backlog", writer.backlog, "gauge", "Batches waiting for the writer."),
        ("edgefleet_telemetry_lag_seconds", round(writer.last_lag_s, 6), "gauge",
         "Delay from receipt to commit of the last written group."),
    ):
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    snapshot = writer.metrics_snapshot()
    if snapshot:
        out += ["# HELP edgefleet_fleet_requests_total Requests reported by devices.",
                "# TYPE edgefleet_fleet_requests_total counter"]
        out += [f"edgefleet_fleet_requests_total{_labels(model=m, version=v)} {r}" for (m, v), r, _, _ in snapshot]
        out += ["# HELP edgefleet_fleet_errors_total Failed requests reported by devices.",
                "# TYPE edgefleet_fleet_errors_total counter"]
        out += [f"edgefleet_fleet_errors_total{_labels(model=m, version=v)} {e}" for (m, v), _, e, _ in snapshot]
        out += ["# HELP edgefleet_fleet_latency_seconds Inference latency reported by devices.",
                "# TYPE edgefleet_fleet_latency_seconds histogram"]
        for (m, v), _, _, h in snapshot:
            out += histogram_lines("edgefleet_fleet_latency_seconds", h, model=m, version=v)
    return out


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format)")
def metrics(request: Request, db: DbSession, who: ViewerPrincipal) -> PlainTextResponse:
    service = request.app.state.ctx.extras.get("telemetry")
    lines = device_lines(db) + rollout_lines(db) + capture_lines(db) + ingest_lines(service)
    return PlainTextResponse("\n".join(lines) + "\n", media_type=CONTENT_TYPE)
