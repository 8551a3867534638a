"""Keeping the image repository's online metadata fresh: snapshot and timestamp are re-signed on a
schedule well inside their expiry, so devices never meet expired metadata while the controller runs.

    plan_refresh(now, expiries, lifetimes)      pure: which roles are due, when to look again
    RepositoryRefresher                         a thread: open repository ─ lock ─ refresh ─ sleep

A role is due once `refresh_fraction` (default one half) of its lifetime has passed: with the default
one-day timestamp that is every 12 hours, leaving 12 hours of slack for a controller restart or an
outage of the artifact store. Re-signing snapshot also re-signs timestamp (it must point at the new
snapshot), so a due snapshot covers both.

The refresher shares the repository writer's lock: TUF metadata has one writer at a time. With several
controller replicas, run it where the rollout engine's leadership lock is held (or accept that both
replicas re-sign: versions only ever go up). It never touches targets metadata, which is signed with the
release key and may be offline; `plan_refresh` reports targets expiring within the horizon so an operator
can be told.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

log = logging.getLogger(__name__)


class RefreshableRepository(Protocol):
    """What the refresher needs of `manifests.repository.ImageRepository`."""

    expiry: Any  # ExpiryPolicy: timestamp_s, snapshot_s, targets_s

    def timestamp(self) -> Any: ...

    def snapshot(self) -> Any: ...

    def targets(self) -> Any: ...

    def refresh_snapshot(self) -> None: ...

    def refresh_timestamp(self) -> None: ...


@dataclass(frozen=True)
class RefreshPlan:
    refresh_snapshot: bool
    refresh_timestamp: bool
    targets_expiring: bool  # needs the release key: tell an operator
    next_check_s: float


def _due_in_s(now: datetime, expires: datetime, lifetime_s: float, refresh_fraction: float) -> float:
    """Seconds until the role is due (<= 0: due now)."""
    remaining_s = (expires - now).total_seconds()
    return remaining_s - lifetime_s * (1.0 - refresh_fraction)


def plan_refresh(*, now: datetime, timestamp_expires: datetime, snapshot_expires: datetime,
                 targets_expires: datetime, timestamp_lifetime_s: float, snapshot_lifetime_s: float,
                 refresh_fraction: float = 0.5, targets_warning_s: float = 7 * 86400.0,
                 min_sleep_s: float = 5.0, max_sleep_s: float = 600.0) -> RefreshPlan:
    """Which online roles to re-sign now and how long to sleep before looking again."""
    if not 0.0 < refresh_fraction < 1.0:
        raise ValueError(f"refresh_fraction must be within (0, 1), got {refresh_fraction}")
    snapshot_due = _due_in_s(now, snapshot_expires, snapshot_lifetime_s, refresh_fraction)
    timestamp_due = _due_in_s(now, timestamp_expires, timestamp_lifetime_s, refresh_fraction)
    refresh_snapshot = snapshot_due <= 0
    refresh_timestamp = refresh_snapshot or timestamp_due <= 0
    # After a refresh the role is fresh: its next due time is a full (1 - fraction) lifetime away.
    next_snapshot = snapshot_lifetime_s * refresh_fraction if refresh_snapshot else snapshot_due
    next_timestamp = timestamp_lifetime_s * refresh_fraction if refresh_timestamp else timestamp_due
    next_check_s = min(max(min(next_snapshot, next_timestamp), min_sleep_s), max_sleep_s)
    targets_expiring = (targets_expires - now).total_seconds() <= targets_warning_s
    return RefreshPlan(refresh_snapshot, refresh_timestamp, targets_expiring, next_check_s)


class RepositoryRefresher:
    """Runs `plan_refresh` against the live repository in a daemon thread."""

    def __init__(self, open_repository: Callable[[], RefreshableRepository], lock: AbstractContextManager[Any], *,
                 refresh_fraction: float = 0.5, min_sleep_s: float = 5.0, max_sleep_s: float = 600.0,
                 error_retry_s: float = 30.0, now: Callable[[], datetime] | None = None) -> None:
        self._open = open_repository
        self._lock = lock
        self._fraction = refresh_fraction
        self._min_sleep_s, self._max_sleep_s, self._error_retry_s = min_sleep_s, max_sleep_s, error_retry_s
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0  # successful re-signing rounds, for health/metrics
        self.last_error: str | None = None

    def refresh_once(self) -> RefreshPlan:
        """Re-sign what is due now; raises whatever the repository raises (missing keys, store down)."""
        with self._lock:
            repo = self._open()
            plan = plan_refresh(
                now=self._now(), timestamp_expires=repo.timestamp().signed.expires,
                snapshot_expires=repo.snapshot().signed.expires, targets_expires=repo.targets().signed.expires,
                timestamp_lifetime_s=repo.expiry.timestamp_s, snapshot_lifetime_s=repo.expiry.snapshot_s,
                refresh_fraction=self._fraction, min_sleep_s=self._min_sleep_s, max_sleep_s=self._max_sleep_s)
            if plan.refresh_snapshot:
                repo.refresh_snapshot()
            elif plan.refresh_timestamp:
                repo.refresh_timestamp()
        if plan.refresh_snapshot or plan.refresh_timestamp:
            self.refreshes += 1
            log.info("image repository re-signed: %s", "snapshot+timestamp" if plan.refresh_snapshot else "timestamp")
        if plan.targets_expiring:
            log.warning("image repository targets metadata expires soon: re-sign it with the release key")
        return plan

    def _round(self) -> float:
        """One refresh; the seconds until the next (a failure retries after `error_retry_s`)."""
        try:
            sleep_s = self.refresh_once().next_check_s
            self.last_error = None
        except Exception as e:  # keep the schedule alive; the next round retries
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("image repository refresh failed (retrying in %.0f s): %s", self._error_retry_s, e)
            sleep_s = self._error_retry_s
        return sleep_s

    def _loop(self, sleep_s: float) -> None:
        while not self._stop.wait(sleep_s):
            sleep_s = self._round()

    def start(self) -> None:
        """Run the first round here, so the repository exists (created on first use) and is fresh
        before the app takes requests; later rounds run on the thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        first_sleep_s = self._round()
        self._thread = threading.Thread(target=self._loop, args=(first_sleep_s,), name="repository-refresher",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `predicate` until true or `timeout_s` passes (for callers that start and check the thread)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
