"""What each dashboard page shows, read from the registry, telemetry, samples and rollout records.

Plain functions from a database session (and the rollout engine) to plain dicts the templates render;
no HTML here and nothing written. Latency figures come from merged histograms
(`controller.telemetry.queries`), never from averaged percentiles.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.dashboard.charts import Marker, Series, line_chart, scatter_chart
from controller.db.base import utcnow
from controller.db.models import Device, DeviceEvent, ModelRelease, Variant
from controller.samples.tables import SampleRow
from controller.telemetry import queries
from controller.telemetry.capture import COUNTERS, GAUGES, device_capture
from controller.telemetry.tables import ModelPointRow

GATE_KINDS = ("gate_passed", "gate_failed")
LATENCY_WINDOW = timedelta(hours=6)
MAX_SERIES_STEPS = 60
MIN_STEP_S = 10


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    seconds = int((now - at).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return at.strftime("%Y-%m-%d %H:%M")


def _device_row(d: Device, now: datetime) -> dict[str, Any]:
    return {
        "id": d.id, "hardware_class": d.hardware_class, "status": d.status, "online": d.online,
        "model": d.current_model, "version": d.current_version, "variant": d.current_variant,
        "state": d.update_state, "last_error": d.last_error, "last_seen": _ago(d.last_seen_at, now),
        "tags": sorted(t.tag for t in d.tags),
    }


def fleet(session: Session) -> dict[str, Any]:
    """Every device, grouped by hardware class, with counts by class, version and presence."""
    now = utcnow()
    devices = list(session.scalars(select(Device).order_by(Device.hardware_class, Device.id)))
    rows = [_device_row(d, now) for d in devices]
    by_class: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(row["hardware_class"], []).append(row)
    versions = Counter(f"{r['model']} {r['version']}" if r["model"] else "no model" for r in rows
                       if r["status"] == "active")
    return {
        "devices": rows,
        "by_class": by_class,
        "versions": sorted(versions.items()),
        "online": sum(1 for r in rows if r["online"] and r["status"] == "active"),
        "active": sum(1 for r in rows if r["status"] == "active"),
    }


def _event_row(e: DeviceEvent) -> dict[str, Any]:
    detail: dict[str, Any] = e.detail if isinstance(e.detail, dict) else {}
    details: dict[str, Any] = detail["details"] if isinstance(detail.get("details"), dict) else {}
    release = f"{detail.get('model')} {detail.get('version')}" if detail.get("model") else ""
    summary = detail.get("reason") or details.get("reasons") or ""
    if e.kind == "status":
        release = f"{detail.get('model') or ''} {detail.get('version') or ''}".strip()
        summary = f"state {detail.get('state')}" + (f", variant {detail.get('variant')}"
                                                     if detail.get("variant") else "")
    return {"at": e.at.strftime("%Y-%m-%d %H:%M:%S"), "kind": e.kind, "release": release,
            "rollout": detail.get("rollout_id") or "", "summary": str(summary)[:300], "details": details}


def _latency_chart(session: Session, device_id: str, events: list[DeviceEvent], now: datetime) -> str:
    first = session.scalar(select(func.min(ModelPointRow.start_at)).where(ModelPointRow.device_id == device_id))
    if first is None:
        return line_chart("latency over time", [])
    since = max(first, now - LATENCY_WINDOW)
    span_s = max((now - since).total_seconds(), 1.0)
    step_s = max(MIN_STEP_S, int(span_s / MAX_SERIES_STEPS) + 1)
    points = queries.series(session, since, now + timedelta(seconds=1), step_s, device_id=device_id)
    series = []
    for key, name in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        pts = [((datetime.fromisoformat(p["start"]) - since).total_seconds(), float(p[key]))
               for p in points if p.get(key) is not None]
        series.append(Series(name, pts))
    markers = []
    last_version: str | None = None
    for e in sorted(events, key=lambda e: e.at):
        detail = e.detail if isinstance(e.detail, dict) else {}
        if e.kind != "status" or not detail.get("version") or e.at < since:
            continue
        version = str(detail["version"])
        if version != last_version:
            markers.append(Marker((e.at - since).total_seconds(), f"v{version}".replace("vv", "v")))
            last_version = version
    return line_chart("latency over time (ms)", series, markers,
                      x_labels=(since.strftime("%H:%M:%S"), now.strftime("%H:%M:%S")))


def device(session: Session, device_id: str) -> dict[str, Any] | None:
    d = session.get(Device, device_id)
    if d is None:
        return None
    now = utcnow()
    events = list(session.scalars(
        select(DeviceEvent).where(DeviceEvent.device_id == device_id).order_by(DeviceEvent.id.desc()).limit(200)
    ))
    gates = [_event_row(e) for e in events if e.kind in GATE_KINDS][:10]
    latency = queries.grouped(session, now - LATENCY_WINDOW, now + timedelta(seconds=1), "version",
                              device_id=device_id)
    samples = session.execute(
        select(SampleRow.reason, SampleRow.status, func.count()).where(SampleRow.device_id == device_id)
        .group_by(SampleRow.reason, SampleRow.status)
    ).all()
    return {
        "device": _device_row(d, now),
        "profile": d.hardware_profile or {},
        "enrolled_at": d.enrolled_at.strftime("%Y-%m-%d %H:%M"),
        "events": [_event_row(e) for e in events[:60]],
        "gates": gates,
        "latency_by_version": latency,
        "latency_chart": _latency_chart(session, device_id, events, now),
        "samples": [{"reason": r, "status": s, "count": int(c)} for r, s, c in samples],
        "samples_total": sum(int(c) for _, _, c in samples),
        "capture": _capture_rows(session, device_id),
    }


def _capture_rows(session: Session, device_id: str) -> dict[str, Any] | None:
    """The device's capture counters: this run's (newest batch) and the total over its runs."""
    found = device_capture(session, device_id)
    if found.latest is None:
        return None
    totals = found.totals
    rows = [{"name": k, "current": int(found.latest.get(k, 0)), "total": totals[k]} for k in COUNTERS]
    rows += [{"name": k, "current": int(found.latest.get(k, 0)), "total": None} for k in GAUGES]
    return {"rows": rows, "runs": len(found.runs), "received_at": found.latest["received_at"].strftime("%Y-%m-%d %H:%M")}


def releases(session: Session) -> list[dict[str, Any]]:
    out = []
    running = Counter(
        (m, v) for m, v in session.execute(
            select(Device.current_model, Device.current_version).where(Device.status == "active")
        ).all()
    )
    for r in session.scalars(select(ModelRelease).order_by(ModelRelease.name, ModelRelease.id.desc())):
        out.append({"name": r.name, "version": r.version, "status": r.status, "progress": r.progress,
                    "message": r.progress_message, "variants": len(r.variants),
                    "created": r.created_at.strftime("%Y-%m-%d %H:%M"), "devices": running[(r.name, r.version)],
                    "error": r.error})
    return out


def _gate_points(session: Session, name: str, version: str) -> Iterable[dict[str, Any]]:
    """Gate reports devices sent for this release: (hardware class, variant, accuracy, p50)."""
    for e in session.scalars(select(DeviceEvent).where(DeviceEvent.kind.in_(GATE_KINDS))
                             .order_by(DeviceEvent.id.desc()).limit(2000)):
        detail: dict[str, Any] = e.detail if isinstance(e.detail, dict) else {}
        details: dict[str, Any] = detail["details"] if isinstance(detail.get("details"), dict) else {}
        if detail.get("model") != name or str(detail.get("version")) != version:
            continue
        yield {"device": e.device_id, "kind": e.kind, "hardware_class": details.get("hardware_class"),
               "variant": details.get("candidate"), "accuracy": details.get("accuracy"),
               "p50_ms": details.get("latency_p50_ms"), "p95_ms": details.get("latency_p95_ms"),
               "reasons": details.get("reasons") or ""}


def variant_id(target: object) -> str:
    """'models/digits/2/openvino-fp16.tar' or 'openvino-fp16.tar' → 'openvino-fp16' (the build's variant id)."""
    leaf = str(target).rsplit("/", 1)[-1]
    return leaf.split(".", 1)[0] if "." in leaf else leaf


def release(session: Session, name: str, version: str) -> dict[str, Any] | None:
    r = session.scalar(select(ModelRelease).where(ModelRelease.name == name, ModelRelease.version == version))
    if r is None:
        return None
    variants: list[Variant] = sorted(r.variants, key=lambda v: v.variant_id)
    now = utcnow()
    telemetry = queries.grouped(session, now - timedelta(days=7), now + timedelta(seconds=1), None,
                                model=name, version=version)
    by_class_variant: dict[tuple[str, str], dict[str, Any]] = {}
    for row in queries.rows(session, now - timedelta(days=7), now + timedelta(seconds=1), model=name,
                            version=version):
        by_class_variant.setdefault((row.hardware_class, row.variant), {"agg": queries.Aggregate()})["agg"].add(row)
    measured = [{"hardware_class": hc, "variant": v, **x["agg"].to_dict()}
                for (hc, v), x in sorted(by_class_variant.items())]
    gates = list(_gate_points(session, name, version))
    accuracy_of = {v.variant_id: v.accuracy for v in variants}
    groups: dict[str, list[tuple[float, float, str]]] = {}
    for v in variants:
        if v.accuracy is not None and v.latency_ms is not None:
            groups.setdefault("build host", []).append((float(v.latency_ms), float(v.accuracy), v.variant_id))
    for g in gates:
        if isinstance(g["accuracy"], (int, float)) and isinstance(g["p50_ms"], (int, float)):
            groups.setdefault(f"gate: {g['hardware_class']}", []).append(
                (float(g["p50_ms"]), float(g["accuracy"]), variant_id(g["variant"])))
    for m in measured:
        acc = accuracy_of.get(variant_id(m["variant"]))
        if acc is not None and m.get("p50_ms") is not None:
            groups.setdefault(f"live: {m['hardware_class']}", []).append(
                (float(m["p50_ms"]), float(acc), variant_id(m["variant"])))
    chart = scatter_chart(
        "accuracy vs latency p50 per hardware class",
        [Series(k, [(x, y) for x, y, _ in pts]) for k, pts in groups.items()],
        # Only the build host's points are labelled; device points name their variant in a tooltip.
        point_labels=[[label for _, _, label in pts] if key == "build host" else [] for key, pts in groups.items()],
        point_titles=[[label for _, _, label in pts] for pts in groups.values()],
    )
    return {
        "name": r.name, "version": r.version, "status": r.status, "progress": r.progress,
        "message": r.progress_message, "error": r.error, "release_counter": r.release_counter,
        "created": r.created_at.strftime("%Y-%m-%d %H:%M"), "created_by": r.created_by,
        "variants": [{"id": v.variant_id, "runtime": v.runtime, "precision": v.precision, "status": v.status,
                      "accuracy": v.accuracy, "agreement": v.agreement, "latency_ms": v.latency_ms,
                      "bytes": v.length, "note": v.note, "arch": (v.custom or {}).get("arch"),
                      "accelerator": (v.custom or {}).get("accelerator")} for v in variants],
        "measured": measured, "gates": gates[:50], "telemetry": telemetry.get("all"), "chart": chart,
    }
