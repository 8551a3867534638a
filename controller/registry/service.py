"""The model registry: register an uploaded release, build its variants in the background, publish them.

    POST /api/v1/models ──▶ register()                       (in the request; 4xx on bad input)
        limits ─ builder.validate ─ store uploads ─ INSERT release (queued) ─ enqueue
        any failure: uploads deleted, no row: nothing half-registered
    worker ──▶ _build(release)
        claim (queued → building, one replica wins) ─ builder.build(progress) ─ store every variant
        ─ sign & publish the offered ones + golden set ─ variant rows ─ published
        any failure: status failed + error, variant artifacts deleted, nothing signed

Variants under the release's accuracy floor are kept (row + artifact under `builds/`) but not signed
into the repository, so devices never see them. A release stuck in `building` longer than
`stale_build_s` (its replica died) is queued again at start-up.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts import ArtifactStore
from controller.db.base import utcnow
from controller.db.models import ModelRelease, Variant
from controller.errors import Conflict, ControllerError, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from controller.registry.builder import BuiltVariant, VariantBuilder, default_builder
from manifests.repository import NewTarget

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
GOLDEN_VARIANT_ID = "golden.npz"
_PROGRESS_WRITE_INTERVAL_S = 0.5


class Publisher(Protocol):
    def publish(self, targets: list[NewTarget]) -> Any: ...


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
        builder: VariantBuilder | None,
        publisher: Publisher,
        max_model_bytes: int,
        max_golden_bytes: int,
        workers: int = 1,
        stale_build_s: float = 600.0,
    ) -> None:
        self._sessions = session_factory
        self._store = store
        self._builder = builder
        self._publisher = publisher
        self.max_model_bytes = max_model_bytes
        self.max_golden_bytes = max_golden_bytes
        self._workers = workers
        self._stale_build_s = stale_build_s
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    @property
    def builder(self) -> VariantBuilder:
        if self._builder is None:
            self._builder = default_builder()
        return self._builder

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
        self.builder.validate(model_bytes, golden_bytes)

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
        if release.status in ("published", "building"):
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

    def _progress_writer(self, release_id: int) -> Callable[[float, str], None]:
        last_write_s = 0.0

        def progress(fraction: float, message: str) -> None:
            nonlocal last_write_s
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
            built = self.builder.build(model_bytes, golden_bytes, self._progress_writer(release_id))
            if not built:
                raise InvalidInput("the build produced no variants")
            self._finish(release, built, golden_bytes, builds_folder)
        except Exception as e:
            self._store.delete_prefix(builds_folder)
            message = e.message if isinstance(e, ControllerError) else f"{type(e).__name__}: {e}"
            log.warning("build of %s %s failed: %s", release.name, release.version, message)
            with self._sessions() as session:
                session.execute(
                    update(ModelRelease)
                    .where(ModelRelease.id == release_id)
                    .values(
                        status="failed", error=message[:4000], progress_message="failed", updated_at=utcnow()
                    )
                )
                session.execute(
                    Variant.__table__.delete().where(Variant.release_id == release_id)  # type: ignore[attr-defined]
                )
                session.commit()

    def _finish(
        self, release: ModelRelease, built: list[BuiltVariant], golden_bytes: bytes, folder: str
    ) -> None:
        floor = release.min_accuracy
        base = {"model": release.name, "version": release.version, "release_counter": release.release_counter}
        rows: list[Variant] = []
        targets: list[NewTarget] = []
        for variant in built:
            key = folder + variant.variant_id
            self._store.write_bytes(key, variant.data)
            offered = variant.offered and (
                floor is None or (variant.accuracy is not None and variant.accuracy >= floor)
            )
            note = variant.note
            if variant.offered and not offered:
                note = (
                    f"accuracy {variant.accuracy} below the release floor {floor}; not offered. " + note
                ).strip()
            name = f"models/{release.name}/{release.version}/{variant.variant_id}"
            custom = {
                **variant.custom,
                **base,
                "kind": "variant",
                "runtime": variant.runtime,
                "precision": variant.precision,
            }
            if variant.accuracy is not None:
                custom["accuracy"] = round(float(variant.accuracy), 6)
            rows.append(
                Variant(
                    release_id=release.id,
                    variant_id=variant.variant_id,
                    runtime=variant.runtime,
                    precision=variant.precision,
                    target_path=name if offered else "",
                    artifact_key=key,
                    sha256=hashlib.sha256(variant.data).hexdigest(),
                    length=len(variant.data),
                    accuracy=variant.accuracy,
                    agreement=variant.agreement,
                    latency_ms=variant.latency_ms,
                    offered=offered,
                    note=note,
                    custom=custom,
                )
            )
            if offered:
                targets.append(NewTarget(name=name, data=variant.data, custom=custom))
        if not targets:
            raise InvalidInput("no variant reached the release's accuracy floor; nothing to publish")
        targets.append(
            NewTarget(
                name=f"models/{release.name}/{release.version}/{GOLDEN_VARIANT_ID}",
                data=golden_bytes,
                custom={**base, "kind": "golden"},
            )
        )
        try:
            self._publisher.publish(targets)
        except ControllerError:
            raise
        except Exception as e:
            raise Unavailable(f"signing targets of {release.name} {release.version} failed: {e}") from e
        with self._sessions() as session:
            session.add_all(rows)
            session.execute(
                update(ModelRelease)
                .where(ModelRelease.id == release.id)
                .values(
                    status="published",
                    progress=1.0,
                    progress_message=f"published {len(targets) - 1} variants",
                    error=None,
                    updated_at=utcnow(),
                )
            )
            session.commit()
