"""Telemetry routes (`/api/v1/telemetry`): per-device latency, fleet percentiles, version comparison.

| route                                      | answers                                                   |
|--------------------------------------------|-----------------------------------------------------------|
| GET /devices/{id}/latency                  | p50/p95/p99 per version + a time series for one device    |
| GET /latency?model=M&group_by=…            | fleet figures grouped by version, variant, hardware class |
| GET /compare?model=M&baseline=A&candidate=B| version vs version, overall and per hardware class        |

Windows end now and reach back `window_s` (at most 400 days); every percentile is read from the merged
histogram of all matching rows (see `controller.telemetry.queries`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from controller.api.deps import DbSession
from controller.api.errors import AUTH_ERRORS
from controller.auth import ViewerPrincipal
from controller.db.base import utcnow
from controller.errors import InvalidInput
from controller.telemetry import queries

router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"], responses=AUTH_ERRORS)

MAX_WINDOW_S = 400 * 24 * 3600
MAX_STEPS = 2000
WindowS = Annotated[int, Query(ge=60, le=MAX_WINDOW_S, description="How far back from now, in seconds.")]
Name = Annotated[str | None, Query(max_length=128)]


def _window(window_s: int) -> tuple[Any, Any]:
    until = utcnow()
    return until - timedelta(seconds=window_s), until + timedelta(seconds=1)


@router.get("/devices/{device_id}/latency", summary="One device's latency and errors per version, over time")
def device_latency(
    device_id: str, db: DbSession, who: ViewerPrincipal, model: Name = None, version: Name = None,
    variant: Name = None, window_s: WindowS = 3600,
    step_s: Annotated[int, Query(ge=10, le=MAX_WINDOW_S)] = 300,
) -> dict[str, Any]:
    if window_s / step_s > MAX_STEPS:
        raise InvalidInput(f"window_s / step_s must be at most {MAX_STEPS} steps, got {window_s // step_s}")
    since, until = _window(window_s)
    filters = {"device_id": device_id, "model": model, "version": version, "variant": variant}
    return {
        "device_id": device_id, "window_s": window_s, "step_s": step_s,
        "by_version": queries.grouped(db, since, until, "version", **filters),
        "series": queries.series(db, since, until, step_s, **filters),
    }


@router.get("/latency", summary="Fleet latency and errors from merged histograms, grouped")
def fleet_latency(
    db: DbSession, who: ViewerPrincipal, model: Name = None, version: Name = None, variant: Name = None,
    hardware_class: Name = None, window_s: WindowS = 3600,
    group_by: Annotated[str | None, Query(pattern="^(version|variant|hardware_class|device_id)$")] = None,
) -> dict[str, Any]:
    since, until = _window(window_s)
    groups = queries.grouped(db, since, until, group_by, model=model, version=version, variant=variant,
                             hardware_class=hardware_class)
    return {"window_s": window_s, "group_by": group_by, "groups": groups}


@router.get("/compare", summary="Version vs version across the fleet (ratios: candidate / baseline)")
def compare_versions(
    db: DbSession, who: ViewerPrincipal, model: Annotated[str, Query(max_length=128)],
    baseline: Annotated[str, Query(max_length=128)], candidate: Annotated[str, Query(max_length=128)],
    hardware_class: Name = None, window_s: WindowS = 24 * 3600,
) -> dict[str, Any]:
    since, until = _window(window_s)
    return {"window_s": window_s, **queries.compare(db, since, until, model, baseline, candidate, hardware_class)}
