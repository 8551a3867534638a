"""The background build worker: queued releases are claimed, built, and published or failed.

    claim (queued → building, one replica wins) ─ controller.build.build_variants(progress)
    ─ publication.publish_build ─ published | awaiting_signature
    any failure: status failed + error, variant rows and build artifacts deleted, nothing signed

A worker thread survives any one build. A release stuck in `building` longer than `stale_build_s` (its
replica died) is queued again at start-up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts import ArtifactStore
from controller.build import BuildError, BuildLimits, BuildOptions, BuildProgress
from controller.db.base import utcnow
from controller.db.models import ModelRelease, Variant
from controller.errors import ControllerError
from controller.registry.ports import BuildFn, Publisher
from controller.registry.publication import publish_build

log = logging.getLogger(__name__)

_PROGRESS_WRITE_INTERVAL_S = 0.5


class BuildWorker:
    """Threads taking release ids from a queue; `limits` is read at each build."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        store: ArtifactStore,
        publisher: Publisher,
        build_fn: BuildFn,
        build_options: BuildOptions,
        limits: Callable[[], BuildLimits],
        workers: int,
        stale_build_s: float,
    ) -> None:
        self._sessions = session_factory
        self._store = store
        self._publisher = publisher
        self._build_fn = build_fn
        self._build_options = build_options
        self._limits = limits
        self._workers = workers
        self._stale_build_s = stale_build_s
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def enqueue(self, release_id: int) -> None:
        self._queue.put(release_id)

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
            limits = self._limits()
            options = BuildOptions(
                **{**vars(self._build_options), "accuracy_floor": release.min_accuracy, "limits": limits}
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
            publish_build(self._sessions, self._store, self._publisher, release, report)
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
