"""The model registry: register an uploaded release, build its variants in the background, publish them.

    POST /api/v1/models ──▶ register()                       (in the request; 4xx on bad input)
        limits ─ builder.validate ─ store uploads ─ INSERT release (queued) ─ enqueue
        any failure: uploads deleted, no row: nothing half-registered
    worker ──▶ worker.BuildWorker                            (background threads)
        claim (queued → building, one replica wins) ─ controller.build.build_variants(progress)
        ─ publication.publish_build: sign & publish the offered variants + golden set ─ variant rows
        any failure: status failed + error, variant artifacts deleted, nothing signed
    offline key ──▶ pending_targets() / import_signed_targets()

The build pipeline (`controller.build`) decides each variant's status: variants under the release's
accuracy floor, or with NaN/Inf outputs, are kept as records (row + artifact under `builds/`) but not
signed into the repository, so devices never see them; figures are stored as measured. A release stuck in
`building` longer than `stale_build_s` (its replica died) is queued again at start-up.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts import ArtifactStore
from controller.build import (
    BuildLimits,
    BuildOptions,
    InvalidGoldenSet,
    InvalidModel,
    build_variants,
    check_release,
)
from controller.db.models import ModelRelease
from controller.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from controller.registry.meta import NAME_RE, VERSION_RE, ReleaseMeta, read_limited
from controller.registry.ports import BuildFn, Publisher
from controller.registry.worker import BuildWorker

__all__ = ["NAME_RE", "VERSION_RE", "BuildFn", "ModelRegistry", "Publisher", "ReleaseMeta"]


class ModelRegistry:
    """Registration and lookup in the request path; builds on a `BuildWorker`; the offline-key steps."""

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
        self.publisher = publisher
        self.max_model_bytes = max_model_bytes
        self.max_golden_bytes = max_golden_bytes
        self._worker = BuildWorker(
            session_factory=session_factory,
            store=store,
            publisher=publisher,
            build_fn=build_fn,
            build_options=build_options or BuildOptions(),
            limits=lambda: self.limits,
            workers=workers,
            stale_build_s=stale_build_s,
        )

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
        model_bytes = read_limited(model, self.max_model_bytes, "model file")
        golden_bytes = read_limited(golden, self.max_golden_bytes, "golden set")
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
        self._worker.enqueue(release.id)
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
        self._worker.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._worker.stop(timeout_s)

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
