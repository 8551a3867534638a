"""The demo's closing summary: per device, what it runs and why, how fast, and what happened last.

Figures come from what the devices reported to the controller (status, gate reports, lifecycle
events) and from the demo's own clients of each device's inference endpoint; nothing is recomputed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from controller.db.base import utcnow
from controller.db.models import Device, DeviceEvent
from controller.telemetry import queries
from demo.scenario import Scenario


def _events(session: Any, device_id: str, limit: int = 200) -> list[DeviceEvent]:
    return list(session.scalars(select(DeviceEvent).where(DeviceEvent.device_id == device_id)
                                .order_by(DeviceEvent.id.desc()).limit(limit)))


def _details(e: DeviceEvent) -> dict[str, Any]:
    detail = e.detail if isinstance(e.detail, dict) else {}
    inner = detail.get("details")
    return inner if isinstance(inner, dict) else {}


def _short(target: object) -> str:
    return str(target).rsplit("/", 1)[-1]


def _why(events: list[DeviceEvent], version: str | None) -> tuple[str, str]:
    """(why this variant, gate p50/p95) from the running version's passed gate and the candidates before it."""
    for e in events:
        detail = e.detail if isinstance(e.detail, dict) else {}
        if e.kind != "gate_passed" or str(detail.get("version")) != str(version):
            continue
        d = _details(e)
        same = [x for x in events if x.id < e.id and (x.detail or {}).get("assignment_version")
                == detail.get("assignment_version")]
        ranked = next((_details(x).get("candidates") for x in same if _details(x).get("candidates")), "")
        rejected = [f"{_short(_details(x).get('rejected_candidate'))} refused "
                    f"({str(_details(x).get('rejected_reasons') or '').split(':', 1)[0]})"
                    for x in reversed(same) if _details(x).get("rejected_candidate")]
        parts = []
        if ranked:
            parts.append("ranked " + " > ".join(_short(c.strip()) for c in str(ranked).split(";")))
        parts.extend(rejected)
        accuracy, agreement = d.get("accuracy"), d.get("agreement")
        if isinstance(accuracy, (int, float)):
            parts.append(f"gate passed: accuracy {accuracy:.3f}"
                         + (f", agreement {agreement:.3f}" if isinstance(agreement, (int, float)) else ""))
        p50, p95 = d.get("latency_p50_ms"), d.get("latency_p95_ms")
        gate = f"{p50:.3f} / {p95:.3f}" if isinstance(p50, (int, float)) and isinstance(p95, (int, float)) else "—"
        return "; ".join(parts) or "—", gate
    return "—", "—"


def _served(session: Any, device_id: str, version: str | None) -> str:
    """p50/p95 the device itself measured while serving `version` (telemetry, merged histograms)."""
    now = utcnow()
    figures = queries.grouped(session, now - timedelta(hours=1), now + timedelta(seconds=1), "version",
                              device_id=device_id).get(str(version))
    if not figures or figures.get("p50_ms") is None:
        return "—"
    return f"{figures['p50_ms']:.3f} / {figures['p95_ms']:.3f}\n({figures['requests']} requests)"


def print_summary(scenario: Scenario, console: Console) -> None:
    table = Table(title="edgefleet demo: the fleet at the end", show_lines=True)
    for column in ("device", "hardware class", "runs", "variant and why", "gate p50 / p95 ms",
                   "telemetry p50 / p95 ms", "client p50 / p95 ms", "last events"):
        table.add_column(column, overflow="fold")
    with scenario.host.ctx.session_factory() as session:
        for row in session.scalars(select(Device).order_by(Device.id)):
            events = _events(session, row.id)
            why, gate = _why(events, row.current_version)
            demo_device = next((d for d in scenario.devices if d.device_id == row.id), None)
            client = demo_device.traffic.percentiles(row.current_version or "") if demo_device else None
            lifecycle = [e for e in events if e.kind not in ("status", "online", "offline")][:4]
            last = "\n".join(f"{e.kind} v{(e.detail or {}).get('version')}" for e in reversed(lifecycle))
            served = _served(session, row.id, row.current_version)
            table.add_row(
                row.id, row.hardware_class,
                f"{row.current_model or '—'} v{row.current_version or '—'}" + ("" if row.online else " (offline)"),
                f"{row.current_variant or '—'}\n{why}", gate, served,
                f"{client[0]:.2f} / {client[1]:.2f}" if client else "—", last or "—",
            )
    console.print(table)
    steps = Table(title="scenario checks")
    for column in ("#", "step", "result", "s", "detail"):
        steps.add_column(column, overflow="fold")
    for r in scenario.results:
        steps.add_row(str(r.number), r.title, "[green]ok[/green]" if r.ok else "[red]FAILED[/red]",
                      f"{r.seconds:.1f}", r.detail)
    console.print(steps)
