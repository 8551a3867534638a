"""The update worker: resume what a crash interrupted, then take assignments one at a time.

    inbox.take ─▶ TrustClient.check ─▶ pending-plan.json ─▶ mark handled ─▶ TrustClient.commit
              ─▶ UpdateEngine.apply ─▶ reconcile the served model with `current`

Persist, then accept: an envelope is verified without touching the trust state (`TrustClient.check`),
its plan is written to `pending-plan.json`, the envelope is marked handled, and only then is the new
assignment version committed to `trust.json`. A crash at any point leaves either nothing (the retained
copy is verified again) or the pending plan (carried out on restart; a version not committed yet is
accepted with the retained copy's second pass or the next assignment). Committing first would open a
window in which the retained copy is already a replay and the plan exists nowhere.

The worker never decides when the process stops: it watches `stop` between assignments, and
`busy` tells the daemon whether an update step is running (see `Daemon.shutdown`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.daemon.config import DaemonConfig
from agent.daemon.inbox import AssignmentInbox
from agent.daemon.reporting import Deployment, MqttReporter
from agent.daemon.serving import LazyServing
from agent.mqtt import AgentSession
from agent.slots import FileSlotStore, ModelRef, SlotError
from agent.state import Journal, JournalError, JournalFile, State, Status, write_atomic

if TYPE_CHECKING:
    from agent.daemon.capture import CaptureWiring
    from agent.engine import UpdateEngine
    from agent.hardware.profile import HardwareProfile
    from agent.state.ports import ActiveModel, EngineConfig
    from agent.telemetry import TelemetryLoop
    from manifests.client import TrustClient
    from manifests.verify import VerifiedPlan

log = logging.getLogger("agent.daemon")
RETRY_UNREACHABLE_S = 10.0


def current_ref(slots: FileSlotStore) -> ModelRef | None:
    try:
        return slots.current()
    except SlotError as e:
        log.error("current pointer unreadable: %s", e)
        return None


def active(slots: FileSlotStore, ref: ModelRef) -> ActiveModel:
    from agent.state.ports import ActiveModel

    return ActiveModel(ref, slots.path(ref))


class UpdateWorker:
    """Runs on the daemon's "update-worker" thread. `crash_hook(step)` is called at named points of
    taking an assignment ("verified", "pending", "handled", "committed") for fault injection."""

    def __init__(self, config: DaemonConfig, slots: FileSlotStore, inbox: AssignmentInbox, serving: LazyServing,
                 session: AgentSession, reporter: MqttReporter, stop: threading.Event,
                 capture: CaptureWiring | None = None, telemetry: TelemetryLoop | None = None,
                 crash_hook: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.slots = slots
        self.inbox = inbox
        self.serving = serving
        self.session = session
        self.reporter = reporter
        self.capture = capture
        self.telemetry = telemetry
        self.crash_hook = crash_hook
        self.busy = threading.Event()
        self._stop = stop
        self._engine: UpdateEngine | None = None
        self._trust: TrustClient | None = None
        self._profile: HardwareProfile | None = None
        self._last_rejected: str | None = None
        self._pending_path = config.state_dir / "pending-plan.json"

    def run(self) -> None:
        try:
            self.resume()
            self._get_profile()  # in a child process; telemetry batches name the hardware class from now on
            while not self._stop.is_set():
                payload = self.inbox.take(1.0)
                if payload is not None and not self._stop.is_set():
                    self.busy.set()
                    try:
                        self.handle(payload)
                    finally:
                        self.busy.clear()
        except BaseException:
            log.exception("update worker failed")
            raise

    def resume(self) -> None:
        """Finish what a crash interrupted, then a verified plan that never reached the journal."""
        try:
            journal = JournalFile(self.config.engine_root / "journal.json").load()
        except JournalError:
            journal = Journal(state=State.CLEANUP)  # let the engine deal with it
        if journal.state is State.IDLE and not self._pending_path.exists():
            return
        self.busy.set()
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
            self.reconcile()
        finally:
            self.busy.clear()

    def handle(self, payload: bytes) -> None:
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
        self.reconcile()

    def reconcile(self) -> None:
        """Serve what the `current` pointer names (an update or a recovery may have moved it)."""
        current = current_ref(self.slots)
        served = self.serving.served
        if current is None or (served is not None and served.sha256 == current.sha256):
            return
        try:
            self.serving.restore(active(self.slots, current))
        except Exception as e:
            log.exception("cannot serve %s", current.sha256)
            self.reporter.publish_status("error", f"restore_failed: {type(e).__name__}: {e}")

    def _hook(self, step: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(step)

    def _apply(self, plan: VerifiedPlan) -> None:
        a = plan.assignment
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

    def _reject(self, payload: bytes, code: str, message: str) -> None:
        digest = hashlib.sha256(payload).hexdigest()
        log.warning("assignment refused (%s): %s", code, message)
        if digest == self._last_rejected:
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
        self.reporter.begin(deployment)

    def _settle_capture(self, plan_json: str, status: Status) -> None:
        """After a recovered update: its assignment's capture policy if it committed."""
        from agent.state.codec import plan_from_json

        if self.capture is None or status not in (Status.SUCCESS, Status.ALREADY_ACTIVE):
            return
        try:
            self.capture.settle(plan_from_json(plan_json).assignment)
        except (ValueError, KeyError, TypeError) as e:
            log.error("journal plan unreadable, capture policy unchanged: %s", e)

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
                                        self.serving, self.serving, self.reporter, slots=self.slots,
                                        config=engine_config(c))
        return self._engine

    def _get_trust(self) -> TrustClient:
        if self._trust is None:
            from manifests.client import ImageRepoSource, TrustClient

            self._trust = TrustClient(self.config.trust_path, ImageRepoSource(self.config.repository_metadata_url))
        return self._trust


def engine_config(c: DaemonConfig) -> EngineConfig:
    """The update engine's settings from the device config (its `[staging]` section)."""
    from agent.staging import StagingConfig
    from agent.state.ports import EngineConfig

    return EngineConfig(staging=StagingConfig(
        nice=c.staging_nice, pin_threads=c.staging_pin_threads, deadline_s=c.staging_deadline_s,
        min_speed_bytes_per_s=c.staging_min_speed_bytes_per_s, reserve_bytes=c.staging_reserve_bytes))
