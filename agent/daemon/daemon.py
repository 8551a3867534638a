"""The daemon's lifecycle: serve, connect, recover, take assignments, stop cleanly.

    start ─▶ serve the committed model ─▶ MQTT session (status) ─▶ READY=1
          └▶ worker: engine.recover() / pending plan ─▶ loop { inbox ─▶ verify ─▶ engine.apply }
    SIGTERM ─▶ STOPPING=1 ─▶ wait for the worker (grace) ─▶ offline ─▶ drain the server ─▶ exit 0

Why this order: applications on the device must get answers as soon as the agent is up, whatever
the broker or the repository are doing, so the committed model is loaded first. "Committed" after
a crash during ACTIVATE/PROBATION/ROLLBACK is the model the journal will roll back to, not the
unproven one the `current` pointer may already name.

Persist, then accept: an envelope is verified without touching the trust state (`TrustClient.check`),
its plan is written to `pending-plan.json`, the envelope is marked handled, and only then is the new
assignment version committed to `trust.json`. A crash at any point leaves either nothing (the retained
copy is verified again) or the pending plan (carried out on restart; a version not committed yet is
accepted with the retained copy's second pass or the next assignment). Committing first would open a
window in which the retained copy is already a replay and the plan exists nowhere.

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

from agent.daemon.config import DaemonConfig
from agent.daemon.errors import DaemonError
from agent.daemon.inbox import AssignmentInbox
from agent.daemon.notify import SystemdNotifier
from agent.daemon.reporting import Deployment, MqttReporter
from agent.daemon.serving import LazyServing, ServingSettings
from agent.mqtt import AgentSession, Outbox, SessionConfig
from agent.slots import FileSlotStore, ModelRef, SlotError
from agent.state import Journal, JournalError, JournalFile, State, write_atomic

if TYPE_CHECKING:
    from agent.daemon.capture import CaptureWiring
    from agent.engine import UpdateEngine
    from agent.hardware.profile import HardwareProfile
    from agent.state.ports import ActiveModel
    from agent.telemetry import SystemSampler, TelemetryLoop
    from manifests.client import TrustClient
    from manifests.verify import VerifiedPlan

log = logging.getLogger("agent.daemon")
RETRY_UNREACHABLE_S = 10.0
_ROLLING_BACK = (State.ACTIVATE, State.PROBATION, State.ROLLBACK)


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
        self._system: SystemSampler | None = None
        self._profile: HardwareProfile | None = None
        self.exit_code = 0
        self._stop = threading.Event()
        self._busy = threading.Event()
        self._worker: threading.Thread | None = None
        self._engine: UpdateEngine | None = None
        self._trust: TrustClient | None = None
        self._last_rejected: str | None = None
        self._server_url: str | None = None
        self._started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._pending_path = config.state_dir / "pending-plan.json"

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        self.start()
        try:
            interval_s = self.notifier.watchdog_interval_s or 1.0
            while not self._stop.wait(min(interval_s, 1.0)):
                if self._worker is not None and not self._worker.is_alive():
                    log.error("update worker died; exiting so the service manager restarts the agent")
                    self.exit_code = 1
                    break
                self.notifier.watchdog()
        finally:
            self.shutdown()
        return self.exit_code

    def start(self) -> None:
        for folder in (self.config.state_dir, self.config.engine_root):
            folder.mkdir(parents=True, exist_ok=True)
        self._check_identity()
        self._enroll_if_needed()
        self._write_runtime("starting")
        self._start_capture()
        restore_error = self._serve_committed()
        self.session = self._connect()
        self.reporter = MqttReporter(self.session, self._current)
        self.reporter.publish_status("idle" if restore_error is None else "error", restore_error)
        if self.config.telemetry_enabled:
            from agent.daemon.telemetry import build_telemetry

            self.telemetry = build_telemetry(self.config, self.session, self.serving,
                                             lambda: self.reporter.state if self.reporter else None,
                                             self._system_sampler())
            self.telemetry.start()
        self._worker = threading.Thread(target=self._work, name="update-worker", daemon=True)
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
        interrupted = worker is not None and worker.is_alive() and self._busy.is_set()
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

    # --- start-up -------------------------------------------------------------------------------

    def _check_identity(self) -> None:
        """Refuse to run with secrets another local user could read: they could impersonate the device."""
        from agent.enroll import identity_problems

        c = self.config
        secrets = [p for p in (c.mqtt_key_file, c.mqtt_password_file) if p is not None]
        problems = identity_problems(c.state_dir, secrets)
        if problems:
            raise DaemonError("refusing to start: " + "; ".join(problems))

    def _enroll_if_needed(self) -> None:
        c = self.config
        if c.trust_path.exists():
            return
        if c.trust_director_root_file is None or c.trust_image_root_file is None:
            raise DaemonError(f"device not enrolled: {c.trust_path} is missing; set trust_director_root_file "
                              "and trust_image_root_file to pin the roots on first start")
        from manifests.client import TrustClient
        from manifests.errors import TrustError

        try:
            TrustClient.enroll(c.trust_path, c.device_id, c.trust_director_root_file.read_bytes(),
                               c.trust_image_root_file.read_bytes())
        except (OSError, TrustError) as e:
            raise DaemonError(f"cannot pin the trust roots: {e}") from e
        log.info("pinned director and image roots for %s", c.device_id)

    def _committed(self) -> ModelRef | None:
        """The model to serve before anything else (see the module docstring)."""
        try:
            journal = JournalFile(self.config.engine_root / "journal.json").load()
        except JournalError as e:
            log.error("journal unreadable (%s); serving what the current pointer names", e)
            journal = Journal()
        try:
            if journal.state in _ROLLING_BACK:
                from agent.state.codec import ref_from_json

                ref = ref_from_json(journal.rollback_to)
            else:
                ref = self.slots.current()
            if ref is not None and self.slots.has(ref.sha256) and self.slots.verify(ref):
                return ref
            previous = self.slots.previous()
            if ref is not None and previous is not None and self.slots.verify(previous):
                log.error("model %s fails its hash check; serving the previous one", ref.sha256)
                return previous
        except (SlotError, ValueError, TypeError) as e:
            log.error("model pointers unreadable: %s", e)
        return None

    def _serve_committed(self) -> str | None:
        ref = self._committed()
        if ref is None:
            return None
        try:
            self.serving.restore(self._active(ref))
        except Exception as e:  # a model that no longer loads must not stop the agent taking a new one
            log.exception("cannot serve the committed model %s", ref.sha256)
            return f"restore_failed: {type(e).__name__}: {e}"
        return None

    def _connect(self) -> AgentSession:
        c = self.config
        config = SessionConfig(
            host=c.mqtt_host, port=c.mqtt_port, device_id=c.device_id, password=c.password(),
            ca_file=str(c.mqtt_ca_file) if c.mqtt_ca_file else None,
            cert_file=str(c.mqtt_cert_file) if c.mqtt_cert_file else None,
            key_file=str(c.mqtt_key_file) if c.mqtt_key_file else None,
            keepalive_s=c.mqtt_keepalive_s, reconnect_max_s=max(1.0, c.mqtt_reconnect_max_s),
            agent_version=_agent_version())
        session = AgentSession(config, Outbox(c.outbox_dir), self.inbox)
        session.start()
        return session

    # --- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._resume()
            self._get_profile()  # in a child process; telemetry batches name the hardware class from now on
            while not self._stop.is_set():
                payload = self.inbox.take(1.0)
                if payload is not None and not self._stop.is_set():
                    self._busy.set()
                    try:
                        self._handle(payload)
                    finally:
                        self._busy.clear()
        except BaseException:
            log.exception("update worker failed")
            raise

    def _resume(self) -> None:
        """Finish what a crash interrupted, then a verified plan that never reached the journal."""
        try:
            journal = JournalFile(self.config.engine_root / "journal.json").load()
        except JournalError:
            journal = Journal(state=State.CLEANUP)  # let the engine deal with it
        if journal.state is State.IDLE and not self._pending_path.exists():
            return
        self._busy.set()
        try:
            engine = self._get_engine()
            if journal.plan_json is not None:
                self._begin(journal.plan_json)
            recovered = engine.recover()
            if journal.plan_json is not None and recovered is not None:
                self._settle_capture(journal.plan_json, recovered.status)
            if self._pending_path.exists():
                from agent.state.codec import plan_from_json

                try:
                    plan = plan_from_json(self._pending_path.read_text(encoding="utf-8"))
                except (OSError, ValueError, KeyError, TypeError) as e:
                    log.error("pending plan unreadable, dropped: %s", e)
                    self._pending_path.unlink(missing_ok=True)
                else:
                    self._apply(plan)
            self._reconcile()
        finally:
            self._busy.clear()

    def _handle(self, payload: bytes) -> None:
        from manifests.errors import RepositoryUnavailable, TrustError

        trust = self._get_trust()
        try:
            verification = trust.check(payload)
        except RepositoryUnavailable as e:
            log.warning("image repository unreachable, retrying in %.0f s: %s", RETRY_UNREACHABLE_S, e)
            self.inbox.put_back(payload)
            self._stop.wait(RETRY_UNREACHABLE_S)
            return
        except TrustError as e:
            self._reject(payload, e.reason.value, str(e))
            return
        except Exception as e:  # a verifier bug or a disk error: refuse, keep serving, say why
            log.exception("assignment verification failed unexpectedly")
            self._reject(payload, type(e).__name__, str(e))
            return
        from agent.state.codec import plan_to_json

        plan = verification.plan
        self._hook("verified")
        write_atomic(self._pending_path, plan_to_json(plan).encode("utf-8"))
        self._hook("pending")
        self.inbox.mark_handled(payload)
        self._hook("handled")
        try:
            trust.commit(verification)
        except (TrustError, OSError) as e:
            self._pending_path.unlink(missing_ok=True)
            self._reject(payload, e.reason.value if isinstance(e, TrustError) else type(e).__name__, str(e))
            return
        self._hook("committed")
        self._apply(plan)
        self._reconcile()

    def _hook(self, step: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(step)

    def _apply(self, plan: VerifiedPlan) -> None:
        from agent.state import Status

        a = plan.assignment
        assert self.reporter is not None
        self.reporter.begin(Deployment(a.version, a.rollout_id, a.release.model, a.release.version))
        if self.capture is not None:
            self.capture.begin(a.capture)
        try:
            outcome = self._get_engine().apply(plan)
        except BaseException:
            if self.capture is not None:
                self.capture.settle(None)
            raise
        if self.capture is not None:  # one transition: a flip through "off" would delete the spool
            self.capture.settle(a if outcome.status in (Status.SUCCESS, Status.ALREADY_ACTIVE) else None)
        self._pending_path.unlink(missing_ok=True)
        log.info("assignment %d (%s/%s) ended %s%s", a.version, a.release.model, a.release.version,
                 outcome.status.value, f": {outcome.reason}" if outcome.reason else "")
        if self.config.trust_raise_floor_on_commit and outcome.status is Status.SUCCESS and outcome.current:
            target = next((t for t in plan.targets if t.name == outcome.current.target), None)
            if target is not None:
                self._get_trust().raise_release_floor(a.release.model, int(target.custom["release_counter"]))

    def _reconcile(self) -> None:
        """Serve what the `current` pointer names (an update or a recovery may have moved it)."""
        current = self._current()
        served = self.serving.served
        if current is None or (served is not None and served.sha256 == current.sha256):
            return
        try:
            self.serving.restore(self._active(current))
        except Exception as e:
            log.exception("cannot serve %s", current.sha256)
            if self.reporter is not None:
                self.reporter.publish_status("error", f"restore_failed: {type(e).__name__}: {e}")

    def _reject(self, payload: bytes, code: str, message: str) -> None:
        import hashlib

        digest = hashlib.sha256(payload).hexdigest()
        log.warning("assignment refused (%s): %s", code, message)
        if digest == self._last_rejected or self.session is None:
            return  # the same retained payload comes back after every reconnect: report it once
        self._last_rejected = digest
        self.session.publish_event("assignment_rejected", reason=code[:128],
                                   details={"error": message[:1024], "sha256": digest})

    def _begin(self, plan_json: str) -> None:
        try:
            doc = json.loads(plan_json)["assignment"]
            release = doc["release"]
            deployment = Deployment(int(doc["version"]), doc.get("rollout_id"), str(release["model"]),
                                    str(release["version"]))
        except (ValueError, KeyError, TypeError):
            deployment = Deployment()
        if self.reporter is not None:
            self.reporter.begin(deployment)

    def _get_profile(self) -> HardwareProfile:
        if self._profile is None:
            from agent.daemon.hardware import probe_profile

            self._profile = probe_profile(self.config.hardware_probe_root)
            log.info("hardware class %s", self._profile.hardware_class)
            if self.telemetry is not None:
                from agent.daemon.telemetry import set_hardware_class

                set_hardware_class(self.telemetry, self._profile.hardware_class)
        return self._profile

    def _get_engine(self) -> UpdateEngine:
        if self._engine is None:
            from agent.engine import UpdateEngine
            from agent.gate import GateSettings, ProcessGate
            from agent.staging import BaseUrlLocator

            c = self.config
            profile = self._get_profile()
            (c.engine_root / "gate").mkdir(parents=True, exist_ok=True)
            gate = ProcessGate(GateSettings(timeout_s=c.gate_timeout_s, latency_rounds=c.gate_latency_rounds),
                               work_dir=c.engine_root / "gate", cache_dir=c.engine_root / "engine-cache",
                               intra_op_threads=c.server_threads)
            self._engine = UpdateEngine(c.engine_root, profile, BaseUrlLocator(c.repository_targets_url), gate,
                                        self.serving, self.serving, self.reporter, slots=self.slots)
        return self._engine

    def _get_trust(self) -> TrustClient:
        if self._trust is None:
            from manifests.client import ImageRepoSource, TrustClient

            self._trust = TrustClient(self.config.trust_path, ImageRepoSource(self.config.repository_metadata_url))
        return self._trust

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

    def _settle_capture(self, plan_json: str, status: Any) -> None:
        """After a recovered update: its assignment's capture policy if it committed."""
        from agent.state import Status
        from agent.state.codec import plan_from_json

        if self.capture is None or status not in (Status.SUCCESS, Status.ALREADY_ACTIVE):
            return
        try:
            self.capture.settle(plan_from_json(plan_json).assignment)
        except (ValueError, KeyError, TypeError) as e:
            log.error("journal plan unreadable, capture policy unchanged: %s", e)

    # --- small helpers --------------------------------------------------------------------------

    def _active(self, ref: ModelRef) -> ActiveModel:
        from agent.state.ports import ActiveModel

        return ActiveModel(ref, self.slots.path(ref))

    def _current(self) -> ModelRef | None:
        try:
            return self.slots.current()
        except SlotError as e:
            log.error("current pointer unreadable: %s", e)
            return None

    def _system_sampler(self) -> SystemSampler:
        if self._system is None:
            from agent.telemetry import SystemSampler

            self._system = SystemSampler(thermal_root=self.config.hardware_probe_root,
                                         disk_path=self.config.engine_root)
        return self._system

    def _mount_metrics(self, app: Any, models: Any, loop: Any) -> None:
        from agent.daemon.telemetry import mount_metrics

        mount_metrics(app, models, loop, self._system_sampler(), self.telemetry)

    def _server_started(self, url: str) -> None:
        self._server_url = url
        self._write_runtime("running" if self.session is not None else "starting")

    def _write_runtime(self, state: str) -> None:
        doc: dict[str, Any] = {"pid": os.getpid(), "device_id": self.config.device_id, "state": state,
                               "started_at": self._started_at, "server_url": self._server_url,
                               "updated_at": time.time()}
        try:
            write_atomic(self.config.runtime_path, json.dumps(doc, sort_keys=True).encode())
        except OSError as e:
            log.warning("cannot write %s: %s", self.config.runtime_path, e)

    @staticmethod
    def _describe(ref: ModelRef | None) -> str:
        return "no model" if ref is None else f"{ref.model} {ref.version} ({ref.target.rsplit('/', 1)[-1]})"


def _agent_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgefleet")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return None

