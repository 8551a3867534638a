"""The daemon's lifecycle: serve, connect, recover, take assignments, stop cleanly.

    start ─▶ serve the committed model ─▶ MQTT session (status) ─▶ READY=1
          └▶ worker: engine.recover() / pending plan ─▶ loop { inbox ─▶ verify ─▶ engine.apply }
    SIGTERM ─▶ STOPPING=1 ─▶ wait for the worker (grace) ─▶ offline ─▶ drain the server ─▶ exit 0

Why this order: applications on the device must get answers as soon as the agent is up, whatever
the broker or the repository are doing, so the committed model is loaded first (`startup.py` says
which model that is after a crash). Taking assignments, persist-then-accept, is `updates.py`.

A SIGTERM during an update waits `shutdown_grace_s` for the worker; after that the process exits
without running further update steps, exactly as after a power cut, and the journal resumes the
update on the next start. The engine is never asked to fail a state because the daemon is stopping.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.daemon import startup
from agent.daemon.config import DaemonConfig
from agent.daemon.inbox import AssignmentInbox
from agent.daemon.notify import SystemdNotifier
from agent.daemon.renewal import RenewalLoop
from agent.daemon.reporting import MqttReporter
from agent.daemon.serving import LazyServing, ServingSettings
from agent.daemon.updates import UpdateWorker, active, current_ref
from agent.mqtt import AgentSession
from agent.slots import FileSlotStore, ModelRef
from agent.state import write_atomic

if TYPE_CHECKING:
    from agent.daemon.capture import CaptureWiring
    from agent.renewal import Renewed
    from agent.telemetry import CaptureCounts, SystemSampler, TelemetryLoop

log = logging.getLogger("agent.daemon")

# How often the running daemon rewrites daemon.json; `edgefleet-agent status --alive` fails after three
# missed beats. Every 30 s keeps flash writes low on SD cards and eMMC.
HEARTBEAT_S = 30.0


class Daemon:
    """`crash_hook(step)` is called at named points of taking an assignment ("verified", "pending",
    "handled", "committed") so fault-injection harnesses can kill the process exactly there."""

    def __init__(self, config: DaemonConfig, notifier: SystemdNotifier | None = None,
                 crash_hook: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.crash_hook = crash_hook
        self.notifier = notifier or SystemdNotifier()
        self.slots = FileSlotStore(config.engine_root)
        self.inbox = AssignmentInbox(config.state_dir / "handled-assignment.sha256")
        self.serving = LazyServing(ServingSettings(
            host=config.server_host, port=config.server_port, unix_socket=config.server_unix_socket,
            serve_as=config.server_serve_as, threads=config.server_threads, workers=config.server_workers,
            max_batch_size=config.server_max_batch_size, max_queue_delay_ms=config.server_max_queue_delay_ms,
            probation_poll_interval_s=config.probation_poll_interval_s), on_started=self._server_started,
            configure_app=self._mount_metrics, on_serving=self._capture_serving,
            on_shadow_compared=self._capture_disagreement)
        self.capture: CaptureWiring | None = None
        self.session: AgentSession | None = None
        self.reporter: MqttReporter | None = None
        self.telemetry: TelemetryLoop | None = None
        self.updates: UpdateWorker | None = None
        self.renewal: RenewalLoop | None = None
        self._system: SystemSampler | None = None
        self.exit_code = 0
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._server_url: str | None = None
        self._started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        self.start()
        try:
            interval_s = self.notifier.watchdog_interval_s or 1.0
            next_heartbeat = time.monotonic() + HEARTBEAT_S
            while not self._stop.wait(min(interval_s, 1.0)):
                if self._worker is not None and not self._worker.is_alive():
                    log.error("update worker died; exiting so the service manager restarts the agent")
                    self.exit_code = 1
                    break
                self.notifier.watchdog()
                if time.monotonic() >= next_heartbeat:  # `status --alive` (container health) reads it
                    self._write_runtime("running")
                    next_heartbeat = time.monotonic() + HEARTBEAT_S
        finally:
            self.shutdown()
        return self.exit_code

    def start(self) -> None:
        for folder in (self.config.state_dir, self.config.engine_root):
            folder.mkdir(parents=True, exist_ok=True)
        startup.check_identity(self.config)
        startup.enroll_if_needed(self.config)
        self._write_runtime("starting")
        self._start_capture()
        restore_error = self._serve_committed()
        self.session = startup.connect(self.config, self.inbox)
        self.reporter = MqttReporter(self.session, self._current)
        self.reporter.publish_status("idle" if restore_error is None else "error", restore_error)
        if self.config.telemetry_enabled:
            from agent.daemon.telemetry import build_telemetry

            self.telemetry = build_telemetry(self.config, self.session, self.serving,
                                             lambda: self.reporter.state if self.reporter else None,
                                             self._system_sampler(), capture=self._reported_capture_counts)
            self.telemetry.start()
        self.renewal = RenewalLoop.for_daemon(self.config, self._stop, self._use_renewed_certificate)
        self.renewal.start()
        self.updates = UpdateWorker(self.config, self.slots, self.inbox, self.serving, self.session, self.reporter,
                                    self._stop, capture=self.capture, telemetry=self.telemetry,
                                    crash_hook=self.crash_hook)
        self._worker = threading.Thread(target=self.updates.run, name="update-worker", daemon=True)
        self._worker.start()
        self._write_runtime("running")
        self.notifier.ready(f"serving {self._describe(self.serving.served)}")
        log.info("agent %s running; serving %s", self.config.device_id, self._describe(self.serving.served))

    def request_stop(self) -> None:
        self._stop.set()
        self.inbox.wake()

    def shutdown(self) -> None:
        self._stop.set()
        self.inbox.wake()
        self.notifier.stopping()
        worker = self._worker
        if worker is not None and worker.is_alive():
            worker.join(self.config.shutdown_grace_s)
        interrupted = (worker is not None and worker.is_alive() and self.updates is not None
                       and self.updates.busy.is_set())
        if self.telemetry is not None:
            self.telemetry.stop()
        if self.session is not None:
            self.session.wait_drained(2.0)
            self.session.stop()
        if interrupted:
            # Stopping the server now would make the running update state fail and journal that;
            # leave the journal where it is and let the next start resume, as after a power cut.
            log.warning("update still running after %.0f s; exiting, the journal resumes it on restart",
                        self.config.shutdown_grace_s)
            self._write_runtime("stopped")
            logging.shutdown()
            os._exit(self.exit_code)
        self.serving.stop()
        if self.capture is not None:
            self.capture.stop()
        self._write_runtime("stopped")
        log.info("agent %s stopped", self.config.device_id)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.request_stop()

    def _serve_committed(self) -> str | None:
        ref = startup.committed_model(self.config, self.slots)
        if ref is None:
            return None
        try:
            self.serving.restore(active(self.slots, ref))
        except Exception as e:  # a model that no longer loads must not stop the agent taking a new one
            log.exception("cannot serve the committed model %s", ref.sha256)
            return f"restore_failed: {type(e).__name__}: {e}"
        return None

    # --- sample capture -------------------------------------------------------------------------

    def _start_capture(self) -> None:
        from agent.capture import CaptureError
        from agent.daemon.capture import CaptureWiring

        try:
            self.capture = CaptureWiring(self.config)
        except CaptureError as e:  # a broken spool folder must not stop serving
            log.error("sample capture disabled: %s", e)
            return
        self.capture.start()

    def _capture_serving(self, models: Any, loop: Any, name: str) -> None:
        if self.capture is not None:
            self.capture.attach(models, loop, name)

    def _capture_disagreement(self, version: Any, feeds: Any, new_outputs: Any, previous_outputs: Any) -> None:
        if self.capture is not None:
            self.capture.observe_disagreement(version, feeds, new_outputs, previous_outputs)

    def _capture_counts(self) -> CaptureCounts | None:
        return self.capture.counts() if self.capture is not None else None

    def _reported_capture_counts(self) -> CaptureCounts | None:
        return self.capture.reported_counts() if self.capture is not None else None

    def _use_renewed_certificate(self, renewed: Renewed) -> None:
        if self.session is not None and self.session.reload_certificate():
            log.info("MQTT connects with certificate %s from its next connection", renewed.serial)

    # --- small helpers --------------------------------------------------------------------------

    def _current(self) -> ModelRef | None:
        return current_ref(self.slots)

    def _system_sampler(self) -> SystemSampler:
        if self._system is None:
            from agent.telemetry import SystemSampler

            self._system = SystemSampler(thermal_root=self.config.hardware_probe_root,
                                         disk_path=self.config.engine_root)
        return self._system

    def _mount_metrics(self, app: Any, models: Any, loop: Any) -> None:
        from agent.daemon.telemetry import mount_metrics

        mount_metrics(app, models, loop, self._system_sampler(), self.telemetry, capture=self._capture_counts)

    def _server_started(self, url: str) -> None:
        self._server_url = url
        self._write_runtime("running" if self.session is not None else "starting")

    def _write_runtime(self, state: str) -> None:
        doc: dict[str, Any] = {"pid": os.getpid(), "device_id": self.config.device_id, "state": state,
                               "started_at": self._started_at, "server_url": self._server_url,
                               "updated_at": time.time()}
        if state == "running":
            doc["heartbeat_s"] = HEARTBEAT_S  # a stalled main loop shows as a stale file
        try:
            write_atomic(self.config.runtime_path, json.dumps(doc, sort_keys=True).encode())
        except OSError as e:
            log.warning("cannot write %s: %s", self.config.runtime_path, e)

    @staticmethod
    def _describe(ref: ModelRef | None) -> str:
        return "no model" if ref is None else f"{ref.model} {ref.version} ({ref.target.rsplit('/', 1)[-1]})"
