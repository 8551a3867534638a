"""A finished build, published: its variant rows, the targets signed into the image repository (offered
variants and the golden set), and the release's summary.

Variants the pipeline did not offer are stored as rows with their figures but never signed. When nothing
can be offered, nothing is signed and the build fails. Canonical JSON has no floats, so measured figures
in signed custom fields travel as 6-decimal strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts import ArtifactStore
from controller.build import BuildReport
from controller.db.base import utcnow
from controller.db.models import ModelRelease, Variant
from controller.errors import ControllerError, InvalidInput, Unavailable
from controller.registry.ports import Publisher
from manifests.repository import NewTarget


def signable(custom: Mapping[str, Any]) -> dict[str, Any]:
    """Custom fields as the image repository signs them: canonical JSON has no floats, so measured
    figures travel as 6-decimal strings (the accuracy, too, as the trust chain expects)."""

    def convert(value: Any) -> Any:
        if isinstance(value, float):
            return f"{value:.6f}" if math.isfinite(value) else None
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {k: convert(v) for k, v in custom.items() if convert(v) is not None}


def evaluation_record(evaluation: Any) -> dict[str, Any]:
    if evaluation is None:
        return {}
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in vars(evaluation).items()
    }


def finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def publish_build(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    publisher: Publisher,
    release: ModelRelease,
    report: BuildReport,
) -> None:
    """Sign the offered variants and the golden set, then store the rows: published, or awaiting the
    offline release key when the publisher only staged them."""
    rows: list[Variant] = []
    targets: list[NewTarget] = []
    for v in report.variants:
        evaluation = v.evaluation
        rows.append(
            Variant(
                release_id=release.id,
                variant_id=v.variant_id,
                runtime=v.runtime,
                precision=v.precision,
                target_path=v.target_name if v.offered else "",
                artifact_key=v.key,
                sha256=v.sha256,
                length=v.length,
                status=v.status,
                offered=v.offered,
                note=v.reason or "",
                accuracy=finite(evaluation.accuracy) if evaluation else None,
                agreement=finite(evaluation.top1_agreement) if evaluation else None,
                latency_ms=finite(evaluation.latency_p50_ms) if evaluation else None,
                figures={**evaluation_record(evaluation), "build_s": round(v.build_s, 3)},
                custom=signable(v.custom),
            )
        )
        if v.offered and v.key is not None:
            targets.append(NewTarget(name=v.target_name, data=store.read_bytes(v.key), custom=signable(v.custom)))
    if not targets:
        reasons = "; ".join(f"{v.variant_id}: {v.reason}" for v in report.variants if v.reason)
        raise InvalidInput(f"no variant can be offered ({reasons or 'none built'}); nothing was published")
    targets.append(
        NewTarget(
            name=report.golden_target_name,
            data=store.read_bytes(report.golden_key),
            custom=signable(report.golden_custom),
        )
    )
    try:
        signed = publisher.publish(targets)
    except ControllerError:
        raise
    except Exception as e:
        raise Unavailable(f"signing targets of {release.name} {release.version} failed: {e}") from e
    offered = len(targets) - 1
    if signed:
        status, message = "published", f"published {offered} of {len(report.variants)} variants"
    else:
        status, message = "awaiting_signature", f"{offered} variants staged; waiting for the offline release key"
    with sessions() as session:
        session.add_all(rows)
        session.execute(
            update(ModelRelease)
            .where(ModelRelease.id == release.id)
            .values(
                status=status,
                progress=1.0,
                report=_summary(report),
                error=None,
                updated_at=utcnow(),
                progress_message=message,
            )
        )
        session.commit()


def _summary(report: BuildReport) -> dict[str, Any]:
    return {
        "model": {
            "opset": report.info.opset,
            "ir_version": report.info.ir_version,
            "producer": report.info.producer,
            "input": report.info.input.name,
            "input_shape": list(report.info.input.shape),
            "ops": dict(report.info.op_counts),
        },
        "baseline": evaluation_record(report.baseline),
        "golden": {
            "target": report.golden_target_name,
            "sha256": report.golden_sha256,
            "length": report.golden_length,
            "custom": signable(report.golden_custom),
        },
    }
