"""The model registry: register an uploaded release, build its variants in the background, publish them.

    POST /api/v1/models ──▶ register()                       (in the request; 4xx on bad input)
        limits ─ builder.validate ─ store uploads ─ INSERT release (queued) ─ enqueue
        any failure: uploads deleted, no row: nothing half-registered
    worker ──▶ _build(release)
        claim (queued → building, one replica wins) ─ controller.build.build_variants(progress)
        ─ sign & publish the offered variants + golden set ─ variant rows ─ published
        any failure: status failed + error, variant artifacts deleted, nothing signed

The build pipeline (`controller.build`) decides each variant's status: variants under the release's
accuracy floor, or with NaN/Inf outputs, are kept as records (row + artifact under `builds/`) but not
signed into the repository, so devices never see them; figures are stored as measured. A release stuck in `building` longer than
`stale_build_s` (its replica died) is queued again at start-up.
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, Protocol

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from tuf.api.metadata import Metadata, Targets

from controller.artifacts import ArtifactStore
from controller.build import (
    BuildError,
    BuildLimits,
    BuildOptions,
    BuildProgress,
    BuildReport,
    InvalidGoldenSet,
    InvalidModel,
    build_variants,
    check_release,
)
from controller.db.base import utcnow
from controller.db.models import ModelRelease, Variant
from controller.errors import Conflict, ControllerError, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from manifests.repository import NewTarget

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_PROGRESS_WRITE_INTERVAL_S = 0.5


BuildFn = Callable[..., BuildReport]


class Publisher(Protocol):
    """Signs targets into the image repository (`registry.repository.RepositoryPublisher`)."""

    def publish(self, targets: list[NewTarget]) -> bool:
        """True when signed and published; False when staged for the offline release key."""
        ...

    def pending(self, staged: list[tuple[str, int, str, dict[str, Any]]]) -> Metadata[Targets]:
        """The unsigned next targets metadata with `staged` added."""
        ...

    def import_signed(self, data: bytes) -> Metadata[Targets]:
        """Check and publish targets metadata signed elsewhere."""
        ...


def _signable(custom: Mapping[str, Any]) -> dict[str, Any]:
    """Custom fields as the image repository signs them: canonical JSON has no floats, so measured
    figures travel as 6-decimal strings (the accuracy, too, as the trust chain expects)."""

    def convert(value: Any) -> Any:
        if isinstance(value, float):
            return f"{value:.6f}" if math.isfinite(value) else None
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {k: convert(v) for k, v in custom.items() if convert(v) is not None}


def _evaluation_record(evaluation: Any) -> dict[str, Any]:
    if evaluation is None:
        return {}
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in vars(evaluation).items()
    }


@dataclass(frozen=True)
class ReleaseMeta:
    name: str
    version: str
    task: str = "classification"
    preprocessing: str = ""
    min_accuracy: float | None = None

    def checked(self) -> ReleaseMeta:
        if not NAME_RE.match(self.name):
            raise InvalidInput(f"model name {self.name!r} must match {NAME_RE.pattern}")
        if not VERSION_RE.match(self.version):
            raise InvalidInput(f"model version {self.version!r} must match {VERSION_RE.pattern}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise InvalidInput(f"min_accuracy must be within [0, 1]; got {self.min_accuracy}")
        if len(self.task) > 64 or len(self.preprocessing) > 8192:
            raise InvalidInput("task is limited to 64 characters and preprocessing notes to 8192")
        return self


def _read_limited(stream: BinaryIO, max_bytes: int, what: str) -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{what} is over the limit of {max_bytes} bytes", details={"max_bytes": max_bytes}
        )
    if not data:
        raise InvalidInput(f"{what} is empty")
    return data


class ModelRegistry:
    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        store: ArtifactStore,
        publisher: Publisher,
        build_fn: BuildFn = build_variants,
        build_options: BuildOptions | None = None,
        max_model_bytes: int,
        max_golden_bytes: int,
        workers: int = 1,
        stale_build_s: float = 600.0,
    ) -> None:
        self._sessions = session_factory
        self._store = store
        self._build_fn = build_fn
        self._build_options = build_options or BuildOptions()
        self.publisher = publisher
        self.max_model_bytes = max_model_bytes
        self.max_golden_bytes = max_golden_bytes
        self._workers = workers
        self._stale_build_s = stale_build_s
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    @property
    def limits(self) -> BuildLimits:
        return BuildLimits(max_model_bytes=self.max_model_bytes, max_golden_bytes=self.max_golden_bytes)

    def _check(self, model_bytes: bytes, golden_bytes: bytes) -> None:
        """The pipeline's own fast checks: not ONNX, too large, golden set not matching the inputs."""
        try:
            check_release(model_bytes, golden_bytes, limits=self.limits)
        except (InvalidModel, InvalidGoldenSet) as e:
            what = "model" if isinstance(e, InvalidModel) else "golden set"
            error = PayloadTooLarge if e.reason == "too_large" else InvalidInput
            raise error(f"{what} refused: {e.message}", details={"reason": e.reason, "part": what}) from e

    # --- registration (request path) -----------------------------------------------------------

    def register(
        self, meta: ReleaseMeta, *, model: BinaryIO, golden: BinaryIO, created_by: str
    ) -> ModelRelease:
        meta = meta.checked()
        with self._sessions() as session:
            if self._find(session, meta.name, meta.version) is not None:
                raise Conflict(f"model {meta.name} version {meta.version} is already registered")
        model_bytes = _read_limited(model, self.max_model_bytes, "model file")
        golden_bytes = _read_limited(golden, self.max_golden_bytes, "golden set")
        self._check(model_bytes, golden_bytes)

        folder = f"uploads/{meta.name}/{meta.version}/{uuid.uuid4().hex}/"
        model_key, golden_key = folder + "model.onnx", folder + "golden.npz"
        try:
            self._store.write_bytes(model_key, model_bytes)
            self._store.write_bytes(golden_key, golden_bytes)
            with self._sessions() as session:
                counter = (
                    session.scalar(
                        select(func.max(ModelRelease.release_counter)).where(ModelRelease.name == meta.name)
                    )
                    or 0
                ) + 1
                release = ModelRelease(
                    name=meta.name,
                    version=meta.version,
                    task=meta.task,
                    preprocessing=meta.preprocessing,
                    min_accuracy=meta.min_accuracy,
                    release_counter=counter,
                    status="queued",
                    progress=0.0,
                    progress_message="waiting for a build worker",
                    model_key=model_key,
                    golden_key=golden_key,
                    model_sha256=hashlib.sha256(model_bytes).hexdigest(),
                    model_bytes=len(model_bytes),
                    created_by=created_by,
                )
                session.add(release)
                try:
                    session.commit()
                except IntegrityError as e:
                    raise Conflict(f"model {meta.name} version {meta.version} is already registered") from e
        except BaseException:
            self._store.delete_prefix(folder)
            raise
        self._queue.put(release.id)
        return release

    @staticmethod
    def _find(session: Session, name: str, version: str) -> ModelRelease | None:
        return session.scalar(
            select(ModelRelease).where(ModelRelease.name == name, ModelRelease.version == version)
        )

    def get(self, session: Session, name: str, version: str) -> ModelRelease:
        release = self._find(session, name, version)
        if release is None:
            raise NotFound(f"model {name} version {version} is not registered")
        return release

    def delete(self, session: Session, name: str, version: str) -> None:
        """Remove a release that is not published (failed, or queued): its row and every artifact."""
        release = self.get(session, name, version)
        if release.status in ("published", "building", "awaiting_signature"):
            raise Conflict(
                f"model {name} version {version} is {release.status}; only unpublished releases "
                "that are not building can be deleted"
            )
        folder = release.model_key.rsplit("/", 1)[0] + "/"
        session.delete(release)
        session.commit()
        self._store.delete_prefix(folder)
        self._store.delete_prefix(folder.replace("uploads/", "builds/", 1))

    # --- background worker ---------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._requeue_interrupted()
        for i in range(self._workers):
            thread = threading.Thread(target=self._loop, name=f"edgefleet-build-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 30.0) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []

    def _requeue_interrupted(self) -> None:
        try:
            self._requeue_stale()
        except SQLAlchemyError as e:  # e.g. an unmigrated database: /healthz says so; builds wait
            log.error("cannot look for interrupted builds: %s", e)

    def _requeue_stale(self) -> None:
        stale_before = utcnow() - timedelta(seconds=self._stale_build_s)
        with self._sessions() as session:
            session.execute(
                update(ModelRelease)
                .where(ModelRelease.status == "building", ModelRelease.updated_at < stale_before)
                .values(status="queued", progress_message="queued again after an interrupted build")
            )
            session.commit()
            ids = session.scalars(select(ModelRelease.id).where(ModelRelease.status == "queued")).all()
        for release_id in ids:
            self._queue.put(release_id)

    def _loop(self) -> None:
        while True:
            release_id = self._queue.get()
            if release_id is None:
                return
            try:
                self._build(release_id)
            except Exception:  # a worker must survive any one build
                log.exception("build of release %s crashed", release_id)

    def _claim(self, release_id: int) -> ModelRelease | None:
        with self._sessions() as session:
            claimed = session.execute(
                update(ModelRelease)
                .where(ModelRelease.id == release_id, ModelRelease.status == "queued")
                .values(status="building", progress=0.0, progress_message="starting", updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            session.commit()
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return session.get(ModelRelease, release_id)

    def _progress_writer(self, release_id: int) -> Callable[[BuildProgress], None]:
        last_write_s = 0.0

        def progress(step: BuildProgress) -> None:
            nonlocal last_write_s
            fraction, message = step.fraction, step.message
            now_s = time.monotonic()
            if now_s - last_write_s < _PROGRESS_WRITE_INTERVAL_S and fraction < 1.0:
                return
            last_write_s = now_s
            with self._sessions() as session:
                session.execute(
                    update(ModelRelease)
                    .where(ModelRelease.id == release_id)
                    .values(
                        progress=max(0.0, min(1.0, float(fraction))) * 0.95,
                        progress_message=message[:256],
                        updated_at=utcnow(),
                    )
                )
                session.commit()

        return progress

    def _build(self, release_id: int) -> None:
        release = self._claim(release_id)
        if release is None:
            return
        builds_folder = release.model_key.rsplit("/", 1)[0].replace("uploads/", "builds/", 1) + "/"
        try:
            model_bytes = self._store.read_bytes(release.model_key)
            golden_bytes = self._store.read_bytes(release.golden_key)
            options = BuildOptions(
                **{**vars(self._build_options), "accuracy_floor": release.min_accuracy, "limits": self.limits}
            )
            report = self._build_fn(
                model_bytes,
                golden_bytes,
                self._store,
                self._progress_writer(release_id),
                model=release.name,
                version=release.version,
                release_counter=release.release_counter,
                options=options,
                key_prefix=builds_folder,
            )
            self._finish(release, report)
        except Exception as e:
            self._store.delete_prefix(builds_folder)
            if isinstance(e, ControllerError):
                message = e.message
            elif isinstance(e, BuildError):
                message = f"{e.reason}: {e.message}"
            else:
                message = f"{type(e).__name__}: {e}"
            log.warning("build of %s %s failed: %s", release.name, release.version, message)
            with self._sessions() as session:
                session.execute(
                    update(ModelRelease)
                    .where(ModelRelease.id == release_id)
                    .values(
                        status="failed", error=message[:4000], progress_message="failed", updated_at=utcnow()
                    )
                )
                session.execute(delete(Variant).where(Variant.release_id == release_id))
                session.commit()

    def _finish(self, release: ModelRelease, report: BuildReport) -> None:
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
                    accuracy=_finite(evaluation.accuracy) if evaluation else None,
                    agreement=_finite(evaluation.top1_agreement) if evaluation else None,
                    latency_ms=_finite(evaluation.latency_p50_ms) if evaluation else None,
                    figures={**_evaluation_record(evaluation), "build_s": round(v.build_s, 3)},
                    custom=_signable(v.custom),
                )
            )
            if v.offered and v.key is not None:
                targets.append(
                    NewTarget(
                        name=v.target_name, data=self._store.read_bytes(v.key), custom=_signable(v.custom)
                    )
                )
        if not targets:
            reasons = "; ".join(f"{v.variant_id}: {v.reason}" for v in report.variants if v.reason)
            raise InvalidInput(
                f"no variant can be offered ({reasons or 'none built'}); nothing was published"
            )
        targets.append(
            NewTarget(
                name=report.golden_target_name,
                data=self._store.read_bytes(report.golden_key),
                custom=_signable(report.golden_custom),
            )
        )
        try:
            signed = self.publisher.publish(targets)
        except ControllerError:
            raise
        except Exception as e:
            raise Unavailable(f"signing targets of {release.name} {release.version} failed: {e}") from e
        summary = {
            "model": {
                "opset": report.info.opset,
                "ir_version": report.info.ir_version,
                "producer": report.info.producer,
                "input": report.info.input.name,
                "input_shape": list(report.info.input.shape),
                "ops": dict(report.info.op_counts),
            },
            "baseline": _evaluation_record(report.baseline),
            "golden": {
                "target": report.golden_target_name,
                "sha256": report.golden_sha256,
                "length": report.golden_length,
                "custom": _signable(report.golden_custom),
            },
        }
        offered = len(targets) - 1
        if signed:
            status, message = "published", f"published {offered} of {len(report.variants)} variants"
        else:
            status, message = "awaiting_signature", f"{offered} variants staged; waiting for the offline release key"
        with self._sessions() as session:
            session.add_all(rows)
            session.execute(
                update(ModelRelease)
                .where(ModelRelease.id == release.id)
                .values(
                    status=status,
                    progress=1.0,
                    report=summary,
                    error=None,
                    updated_at=utcnow(),
                    progress_message=message,
                )
            )
            session.commit()

    # --- offline release key ---------------------------------------------------------------------

    @staticmethod
    def _awaiting(session: Session) -> list[ModelRelease]:
        query = (
            select(ModelRelease).where(ModelRelease.status == "awaiting_signature").order_by(ModelRelease.id)
        )
        return list(session.scalars(query))

    @staticmethod
    def _staged_targets(release: ModelRelease) -> list[tuple[str, int, str, dict[str, Any]]]:
        items = [(v.target_path, v.length, v.sha256, dict(v.custom)) for v in release.variants if v.offered]
        golden = release.report.get("golden", {})
        items.append((golden["target"], golden["length"], golden["sha256"], dict(golden["custom"])))
        return items

    def pending_targets(self, session: Session) -> dict[str, Any]:
        """The unsigned next targets metadata covering every release awaiting the offline key."""
        releases = self._awaiting(session)
        if not releases:
            raise NotFound("no release is waiting for the offline release key")
        staged = [item for release in releases for item in self._staged_targets(release)]
        md = self.publisher.pending(staged)
        return dict(md.to_dict())

    def import_signed_targets(self, session: Session, data: bytes) -> tuple[int, list[ModelRelease]]:
        """Publish externally signed targets metadata; returns its version and the releases it completes."""
        md = self.publisher.import_signed(data)
        listed = {name: t.hashes.get("sha256") for name, t in md.signed.targets.items()}
        completed = []
        for release in self._awaiting(session):
            if all(listed.get(name) == sha for name, _, sha, _ in self._staged_targets(release)):
                release.status = "published"
                release.progress_message = f"published with targets version {md.signed.version} (offline key)"
                completed.append(release)
        session.commit()
        return md.signed.version, completed


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
