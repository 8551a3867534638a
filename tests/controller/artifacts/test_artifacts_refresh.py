"""The image-repository refresher: a real keyring and repository in a local store; time is injected."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from controller.artifacts import LocalArtifactStore
from controller.artifacts.refresh import RefreshPlan, RepositoryRefresher, plan_refresh
from manifests.keyring import Keyring
from manifests.repository import ExpiryPolicy, ImageRepository

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _plan(now: datetime, *, timestamp_left_s: float, snapshot_left_s: float,
          targets_left_s: float = 90 * 86400.0) -> RefreshPlan:
    return plan_refresh(now=now, timestamp_expires=T0 + timedelta(seconds=timestamp_left_s),
                        snapshot_expires=T0 + timedelta(seconds=snapshot_left_s),
                        targets_expires=T0 + timedelta(seconds=targets_left_s),
                        timestamp_lifetime_s=86400.0, snapshot_lifetime_s=7 * 86400.0)


def test_plan_refresh_table() -> None:
    fresh = _plan(T0, timestamp_left_s=86400, snapshot_left_s=7 * 86400)
    assert not fresh.refresh_timestamp and not fresh.refresh_snapshot
    assert fresh.next_check_s == 600.0  # capped by max_sleep_s
    half_day = _plan(T0, timestamp_left_s=43200, snapshot_left_s=7 * 86400)
    assert half_day.refresh_timestamp and not half_day.refresh_snapshot
    snapshot_due = _plan(T0, timestamp_left_s=86400, snapshot_left_s=3 * 86400)
    assert snapshot_due.refresh_snapshot and snapshot_due.refresh_timestamp
    expired = _plan(T0, timestamp_left_s=-10, snapshot_left_s=-10)
    assert expired.refresh_snapshot and expired.refresh_timestamp
    soon = plan_refresh(now=T0, timestamp_expires=T0 + timedelta(seconds=100), snapshot_expires=T0 + timedelta(days=7),
                        targets_expires=T0 + timedelta(days=1), timestamp_lifetime_s=150,
                        snapshot_lifetime_s=7 * 86400)
    assert not soon.refresh_timestamp and soon.next_check_s == pytest.approx(25.0)
    assert soon.targets_expiring
    with pytest.raises(ValueError):
        plan_refresh(now=T0, timestamp_expires=T0, snapshot_expires=T0, targets_expires=T0, timestamp_lifetime_s=1,
                     snapshot_lifetime_s=1, refresh_fraction=1.0)


@pytest.fixture
def repository(tmp_path: Path) -> ImageRepository:
    keyring = Keyring.create(tmp_path / "keys")
    repo = ImageRepository(LocalArtifactStore(tmp_path / "store"), keyring,
                           ExpiryPolicy(targets_s=90 * 86400.0, snapshot_s=1000.0, timestamp_s=100.0))
    repo.initialize()
    return repo


def test_refreshes_what_is_due(repository: ImageRepository) -> None:
    clock = {"now": datetime.now(timezone.utc)}
    refresher = RepositoryRefresher(lambda: repository, threading.Lock(), now=lambda: clock["now"])
    ts0, snap0 = repository.timestamp().signed.version, repository.snapshot().signed.version

    refresher.refresh_once()
    assert repository.timestamp().signed.version == ts0  # fresh: nothing re-signed

    clock["now"] += timedelta(seconds=60)  # timestamp past half its 100 s life
    refresher.refresh_once()
    assert repository.timestamp().signed.version == ts0 + 1
    assert repository.snapshot().signed.version == snap0

    clock["now"] += timedelta(seconds=600)  # snapshot past half its 1000 s life
    refresher.refresh_once()
    assert repository.snapshot().signed.version == snap0 + 1
    assert repository.timestamp().signed.snapshot_meta.version == snap0 + 1
    assert refresher.refreshes == 2


def test_thread_keeps_going_after_errors(repository: ImageRepository) -> None:
    attempts = {"n": 0}

    def open_repository() -> ImageRepository:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise OSError("artifact store unreachable")
        return repository

    far_future = datetime.now(timezone.utc) + timedelta(seconds=90)  # timestamp due on every round
    refresher = RepositoryRefresher(open_repository, threading.Lock(), now=lambda: far_future,
                                    min_sleep_s=0.01, max_sleep_s=0.01, error_retry_s=0.01)
    before = repository.timestamp().signed.version
    refresher.start()
    try:
        deadline = time.monotonic() + 10
        while refresher.refreshes < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        refresher.stop()
    assert attempts["n"] >= 3
    assert refresher.refreshes >= 2 and refresher.last_error is None
    assert repository.timestamp().signed.version >= before + 2


def test_start_runs_the_first_round_before_returning(repository: ImageRepository) -> None:
    """The app starts the refresher before it takes requests: the first round (which also creates a
    missing repository) must be done by then, not left to the thread."""
    opened: list[str] = []

    def open_repository() -> ImageRepository:
        opened.append(threading.current_thread().name)
        return repository

    due = datetime.now(timezone.utc) + timedelta(seconds=90)
    refresher = RepositoryRefresher(open_repository, threading.Lock(), now=lambda: due, min_sleep_s=60)
    before = repository.timestamp().signed.version
    refresher.start()
    try:
        assert opened == [threading.current_thread().name] and refresher.refreshes == 1
        assert repository.timestamp().signed.version == before + 1
    finally:
        refresher.stop()
