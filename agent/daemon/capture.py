"""Sample capture in the daemon: the capturer on the inference path, its policy, the upload loop.

```
 assignment applied ─▶ begin(policy) ─▶ outcome success ─▶ settle: committed-assignment.json
                                       └ failure/rollback ─▶ settle: the committed policy again
 LazyServing serves a model name ─▶ attach ─▶ ModelServer observer: SampleCapturer.observe
 probation shadow (previous version's answers) ─▶ SampleCapturer.observe_disagreement
 upload thread: every capture_upload_every_s ─▶ SampleUploader.upload_round until the spool is empty
                a failed round ─▶ the wait doubles, up to capture_upload_max_backoff_s
                every few seconds ─▶ capture-counts.json (the counters, for `edgefleet-agent status`)
 counts() ─▶ telemetry batches (`capture`) and /metrics
```

Why the new policy applies from the start of an update and not only at its commit: disagreement
capture exists only during probation, so the new assignment's policy must already be in force then.
An update that fails or rolls back returns to the committed assignment's policy. The off switch is
applied at once, whatever happens later: it deletes every sample not yet uploaded.

Footprint: this module imports no numpy; the capturer (which does) is created with the first model
served. Uploads use the device's own credentials (device id and broker password, HTTP Basic), as
the controller's device routes expect; presigned URLs are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.capture import CaptureError, CaptureSpool, HttpControllerApi, SampleUploader
from agent.daemon.config import DaemonConfig
from agent.state import write_atomic
from agent.telemetry.capture_counts import CAPTURE_REASONS, CaptureCounts
from manifests import assignment as A

if TYPE_CHECKING:
    from agent.capture.capturer import SampleCapturer
    from agent.server.model_server import ModelServer

log = logging.getLogger("agent.daemon.capture")
MAX_ASSIGNMENT_FILE_BYTES = 256 * 1024
COUNTS_EVERY_S = 5.0  # how often `capture-counts.json` follows the counters (for `edgefleet-agent status`)


def load_committed_policy(path: Path) -> A.CapturePolicy:
    """The capture policy of the last committed assignment; capture off when there is none or it is unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return A.CapturePolicy()
    except OSError as e:
        log.error("cannot read %s (%s); capture stays off", path, e)
        return A.CapturePolicy()
    try:
        return A.decode(data, max_bytes=MAX_ASSIGNMENT_FILE_BYTES).capture
    except Exception as e:  # any decoding failure: a damaged file must not switch capture on
        log.error("%s is not a valid assignment (%s); capture stays off", path, e)
        return A.CapturePolicy()


def describe(policy: A.CapturePolicy) -> str:
    if not policy.enabled:
        return "off"
    return (f"on: random_rate {policy.random_rate}, low_confidence_threshold {policy.low_confidence_threshold}, "
            f"disagreement {policy.capture_disagreement}, at most {policy.max_samples_per_hour}/h "
            f"and {policy.max_bytes_per_day} bytes/day")


class CaptureWiring:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.assignment_path = config.state_dir / "committed-assignment.json"
        self.committed = load_committed_policy(self.assignment_path)
        self.policy = self.committed
        self.spool = CaptureSpool(config.capture_dir, max_bytes=config.capture_spool_max_bytes)
        self.capturer: SampleCapturer | None = None
        self.uploader: SampleUploader | None = None
        self.failed_rounds = 0
        self.next_wait_s = config.capture_upload_every_s  # until the next round (grows while rounds fail)
        self.counts_path = config.state_dir / "capture-counts.json"
        self.since_s = time.time()
        self._saved: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.policy.enabled:
            self._discard()

    # --- policy ---------------------------------------------------------------------------------

    def begin(self, policy: A.CapturePolicy) -> None:
        """An update starts: its assignment's policy governs capture from now on (see the docstring)."""
        self._set(policy)

    def settle(self, assignment: A.Assignment | None) -> None:
        """The update ended: `assignment` when it committed (persisted), None when it did not."""
        if assignment is not None:
            try:
                write_atomic(self.assignment_path, A.encode(assignment))
            except OSError as e:
                log.error("cannot persist the committed assignment for capture: %s", e)
            self.committed = assignment.capture
        self._set(self.committed)

    def _set(self, policy: A.CapturePolicy) -> None:
        with self._lock:
            changed, self.policy = policy != self.policy, policy
            capturer = self.capturer
        if changed:
            log.info("capture %s", describe(policy))
        if capturer is not None:
            capturer.set_policy(policy)  # the off switch clears the spool there
        elif not policy.enabled:
            self._discard()

    def _discard(self) -> None:
        discarded = self.spool.clear()
        if discarded:
            log.info("capture is off: %d samples not uploaded were deleted", discarded)

    # --- the inference path ---------------------------------------------------------------------

    def get_capturer(self) -> SampleCapturer:
        """The capturer, created with the first model served (it imports numpy)."""
        with self._lock:
            if self.capturer is None:
                from agent.capture.capturer import SampleCapturer

                self.capturer = SampleCapturer(self.config.device_id, self.spool, self.policy)
                self.capturer.start()
            return self.capturer

    def attach(self, models: ModelServer, loop: asyncio.AbstractEventLoop, name: str) -> None:
        """Observe the batches of model `name` (idempotent; the observer list belongs to the server loop)."""
        observe = self.get_capturer().observe

        def add() -> None:
            if observe not in models.model(name).observers:
                models.add_observer(name, observe)
                log.info("capturing from model %s (%s)", name, describe(self.policy))

        loop.call_soon_threadsafe(add)

    def observe_disagreement(self, version: Any, feeds: Mapping[str, Any], new_outputs: Mapping[str, Any],
                             previous_outputs: Mapping[str, Any]) -> None:
        self.get_capturer().observe_disagreement(version, feeds, new_outputs, previous_outputs)

    # --- uploads --------------------------------------------------------------------------------

    def start(self) -> None:
        c = self.config
        password = c.password()
        if c.controller_url is None or password is None:
            log.warning("no controller_url or device password: captured samples stay spooled, not uploaded")
        else:
            self.uploader = SampleUploader(self.spool, HttpControllerApi(c.controller_url, c.device_id, password))
        self._thread = threading.Thread(target=self._run, name="capture-upload", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        capturer = self.capturer
        if capturer is not None:
            capturer.stop(timeout_s)
        self.save_counts()

    def upload_pending(self) -> int:
        """Upload rounds until the spool is empty; raises CaptureError when a round confirms nothing."""
        assert self.uploader is not None
        total = 0
        while len(self.spool) and not self._stop.is_set():
            confirmed = self.uploader.upload_round()
            if confirmed == 0:
                raise CaptureError(f"no sample confirmed of {len(self.spool)} waiting "
                                   f"({self.uploader.stats['put_failures']} failed PUTs so far)")
            total += confirmed
        return total

    def _run(self) -> None:
        next_round_s = time.monotonic() + self.next_wait_s
        while not self._stop.wait(max(0.0, min(COUNTS_EVERY_S, next_round_s - time.monotonic()))):
            if self.uploader is not None and time.monotonic() >= next_round_s:
                self._upload_round()
                next_round_s = time.monotonic() + self.next_wait_s
            self.save_counts()

    def _upload_round(self) -> None:
        every_s = self.config.capture_upload_every_s
        try:
            uploaded = self.upload_pending()
        except Exception as e:  # CaptureError/UploadError: the controller or the store is unreachable
            self.failed_rounds += 1
            self.next_wait_s = min(self.config.capture_upload_max_backoff_s, max(self.next_wait_s, every_s) * 2)
            if isinstance(e, CaptureError):
                log.warning("sample upload failed, next try in %.1f s: %s", self.next_wait_s, e)
            else:
                log.exception("sample upload round failed unexpectedly; next try in %.1f s", self.next_wait_s)
            return
        if uploaded:
            log.info("uploaded %d captured samples", uploaded)
        self.next_wait_s = every_s

    # --- counts ---------------------------------------------------------------------------------

    def counts(self) -> CaptureCounts:
        """Counters since this wiring was created (the daemon's start), and what waits in the spool.

        Read from other threads (telemetry, /metrics): each figure is one read of a counter, so a
        snapshot may be a row apart between two counters, never torn within one."""
        capturer, uploader, spool = self.capturer, self.uploader, self.spool
        cs = capturer.stats.copy() if capturer is not None else None
        us = uploader.stats.copy() if uploader is not None else None
        captured = {r: cs[f"captured:{r}"] if cs is not None else 0 for r in CAPTURE_REASONS}
        pending = spool.pending()
        return CaptureCounts(
            since_s=self.since_s,
            captured_random=captured["random"], captured_low_confidence=captured["low_confidence"],
            captured_disagreement=captured["disagreement"],
            dropped_hourly_budget=cs["skipped:hourly_budget"] if cs is not None else 0,
            dropped_daily_budget=cs["skipped:daily_budget"] if cs is not None else 0,
            dropped_spool_full=spool.dropped,
            dropped_backlog=cs["dropped_backlog"] if cs is not None else 0,
            write_errors=cs["write_errors"] if cs is not None else 0,
            discarded_by_policy=spool.discarded,
            uploaded=us["uploaded"] if us is not None else 0,
            upload_failures=us["put_failures"] if us is not None else 0,
            upload_rounds_failed=self.failed_rounds,
            spooled_bytes=cs["spooled_bytes"] if cs is not None else 0,
            pending=len(pending), pending_bytes=sum(m.size_bytes for m in pending))

    def reported_counts(self) -> CaptureCounts | None:
        """For telemetry batches: None until there is something to say (see `capture_counts`)."""
        counts = self.counts()
        return counts if any(counts.counters().values()) else None

    def save_counts(self) -> None:
        """`capture-counts.json` for `edgefleet-agent status`; written only when a figure changed."""
        counts = self.counts()
        figures = counts.counters()
        if figures == self._saved:
            return
        try:
            write_atomic(self.counts_path, json.dumps(counts.to_dict(), sort_keys=True).encode())
        except OSError as e:
            log.warning("cannot write %s: %s", self.counts_path, e)
            return
        self._saved = figures
