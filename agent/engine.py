"""The journaled update driver: runs one verified plan through the state machine, surviving kill -9.

    apply(plan) ─▶ VERIFY ─▶ DOWNLOAD ─▶ GATE ─▶ ACTIVATE ─▶ PROBATION ─▶ COMMIT ─▶ CLEANUP ─▶ IDLE
                  (select)   (stager)   (child)  (pointers   (Probation   (delete
                                                 +Activator)  port)        previous)

Persist, then act: entering a state writes the journal (atomically) before the state's side effect,
so after a crash `recover()` knows where the update was and continues from `agent.state.RESUME`.
The pure table decides every successor; the driver only runs the state's work and reports the event
it produced. Every transition is reported through the `Reporter` port; the final status is computed
from the journal's flags.

Its ports, configuration and outcome types live in `agent.state.ports` (re-exported here).

The driver trusts only the verified plan (hashes, sizes, compatibility). It raises nothing for a bad
update: every failure ends in a status with a reason, and the device keeps serving its model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.gate import Gate, GateInput
from agent.hardware.profile import HardwareProfile
from agent.selection import select
from agent.slots import FileSlotStore, ModelRef, SlotError, SlotStore, heal_current
from agent.staging import Fetcher, Stager, StagingError, TargetLocator
from agent.staging.packages import entry_for, runtime_extra
from agent.state import (
    Event,
    Flags,
    Journal,
    JournalError,
    JournalFile,
    State,
    Status,
    final_status,
    transition,
)
from agent.state.codec import plan_from_json, plan_to_json, ref_from_json, ref_to_json
from agent.state.machine import resume_state
from agent.state.ports import (
    Activator,
    ActiveModel,
    Clock,
    EngineConfig,
    LogReporter,
    Probation,
    ProbationResult,
    Reporter,
    SystemClock,
    UpdateEvent,
    UpdateOutcome,
    run_with_timeout,
)
from manifests.errors import TrustError
from manifests.verify import SignedTarget, VerifiedPlan

log = logging.getLogger(__name__)

__all__ = ["Activator", "ActiveModel", "Clock", "EngineConfig", "Fetcher", "LogReporter", "Probation",
           "ProbationResult", "Reporter", "SlotStore", "SystemClock", "UpdateEngine", "UpdateEvent", "UpdateOutcome",
           "plan_from_json", "plan_to_json"]


@dataclass(frozen=True)
class _Step:
    event: Event
    reason: str | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)  # journal fields applied on entering the next state
    detail: Mapping[str, Any] = field(default_factory=dict)


CrashHook = Callable[[str], None]


class UpdateEngine:
    """Drives verified plans on one model disk. One update at a time; call `recover()` at start-up.

    `crash_hook(step)` is called at named points ("download", "staged", "gate", "pointers",
    "activated", "commit") so fault-injection harnesses can kill the process exactly there.
    """

    def __init__(self, root: Path, profile: HardwareProfile, locator: TargetLocator, gate: Gate,
                 activator: Activator, probation: Probation, reporter: Reporter | None = None,
                 clock: Clock | None = None, fetcher: Fetcher | None = None, slots: SlotStore | None = None,
                 config: EngineConfig | None = None, crash_hook: CrashHook | None = None) -> None:
        self.root = root
        self.profile = profile
        self.locator = locator
        self.gate = gate
        self.activator = activator
        self.probation = probation
        self.reporter = reporter or LogReporter()
        self.clock = clock or SystemClock()
        self.config = config or EngineConfig()
        self.slots = slots or FileSlotStore(root)
        self.stager = Stager(root / "staging", self.slots, fetcher, self.config.staging,
                             monotonic=self.clock.monotonic, sleep=self.clock.sleep)
        self.journal_file = JournalFile(root / "journal.json")
        self.crash_hook = crash_hook
        self._journal = Journal()
        self._gate_reports: list[Mapping[str, Any]] = []
        self._recovered = False

    # --- public -----------------------------------------------------------------------------------

    @property
    def journal(self) -> Journal:
        return self._journal

    def recover(self) -> UpdateOutcome | None:
        """Finish whatever a crash interrupted; make sure `current` names a verified slot."""
        self._recovered = True
        try:
            self._journal = self.journal_file.load()
        except JournalError as e:
            log.error("journal unreadable, starting from IDLE (pointers are authoritative): %s", e)
            self._journal = Journal()
        j = self._journal
        if j.state is State.IDLE:
            heal_current(self.slots)
            return None
        if j.store_count > 2 * self.config.max_store_count:
            # Even rollback and cleanup keep crashing: stop, keep whatever `current` names.
            flags = replace(j.flags, failed=True, rollback_failed=j.flags.activated and not j.flags.rolled_back)
            self._enter(State.IDLE, None, "restart_loop: giving up after repeated crashes", {"flags": flags})
        else:
            nxt = resume_state(j.state, j.store_count, self.config.max_store_count)
            reason = f"resumed after a restart in {j.state.value}"
            if nxt is not j.state and j.store_count > self.config.max_store_count:
                reason = f"restart_loop: store count {j.store_count} past {self.config.max_store_count}"
            self._enter(nxt, None, reason, {"restarts": j.restarts + 1})
            self._drive()
        heal_current(self.slots)
        return self._outcome()

    def apply(self, plan: VerifiedPlan) -> UpdateOutcome:
        """Run one verified plan to its final status. Applying the same assignment twice is a no-op."""
        if not self._recovered:
            self.recover()
        a = plan.assignment
        deployment_id = f"{a.device_id}:{a.version}"
        j = self._journal
        if j.deployment_id == deployment_id and j.state is State.IDLE:
            return self._outcome()
        self._gate_reports = []
        self._journal = Journal(state=State.IDLE, deployment_id=deployment_id, plan_json=plan_to_json(plan),
                                event_seq=j.event_seq)
        self._enter(State.VERIFY, Event.ASSIGN, None, {})
        self._drive()
        return self._outcome()

    # --- driver -----------------------------------------------------------------------------------

    def _drive(self) -> None:
        while self._journal.state is not State.IDLE:
            state = self._journal.state
            try:
                step = self._run_with_timeout(state)
            except Exception as e:  # a port raising unexpectedly is a failure of this state, never a crash
                log.exception("update state %s failed", state.value)
                step = _Step(Event.FAIL, f"{state.value.lower()}_error: {type(e).__name__}: {e}")
                if state is State.ROLLBACK:
                    step = replace(step, changes={"flags": replace(self._journal.flags, rollback_failed=True)})
            nxt = transition(state, step.event)
            self._enter(nxt, step.event, step.reason, step.changes, step.detail)

    def _enter(self, state: State, event: Event | None, reason: str | None, changes: Mapping[str, Any],
               detail: Mapping[str, Any] | None = None) -> None:
        """Persist the journal in `state` (the write that precedes the state's side effects), then report."""
        j = self._journal
        previous = j.state
        flags: Flags = changes.get("flags", j.flags)
        if state is State.FAILURE:
            flags = replace(flags, failed=True)
        j = replace(j, **{k: v for k, v in changes.items() if k != "flags"})
        j = replace(j, state=state, flags=flags, store_count=j.store_count + 1, event_seq=j.event_seq + 1,
                    reason=reason if reason is not None else j.reason)
        self.journal_file.save(j)
        self._journal = j
        status = final_status(flags) if state is State.IDLE else Status.IN_PROGRESS
        self._emit(UpdateEvent(seq=j.event_seq, deployment_id=j.deployment_id or "", state=state.value,
                               previous_state=previous.value, event=event.value if event else None,
                               status=status.value, reason=reason, detail=dict(detail or {})))

    def _emit(self, event: UpdateEvent) -> None:
        try:
            self.reporter.report(event)
        except Exception:  # reporting must never change the outcome of an update
            log.exception("reporter failed on event %d", event.seq)

    def _run_with_timeout(self, state: State) -> _Step:
        do = getattr(self, f"_do_{state.value.lower()}")

        def action() -> _Step:
            self._hook(f"enter:{state.value}")
            step: _Step = do()
            return step

        timeout_s = self.config.state_timeouts_s.get(state)
        if state is State.PROBATION:
            timeout_s = self._plan().assignment.probation.window_s + self.config.probation_grace_s
        if timeout_s is None:
            return action()
        return run_with_timeout(action, timeout_s, f"update-{state.value.lower()}",
                                f"{state.value} did not finish within {timeout_s} s")

    def _hook(self, step: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(step)

    # --- helpers ----------------------------------------------------------------------------------

    def _plan(self) -> VerifiedPlan:
        if self._journal.plan_json is None:
            raise JournalError("journal holds no plan")
        return plan_from_json(self._journal.plan_json)

    def _candidate(self) -> SignedTarget:
        name = self._journal.candidates[self._journal.candidate_index]
        return next(t for t in self._plan().targets if t.name == name)

    def _ref_for(self, target: SignedTarget) -> ModelRef:
        selection = select(self.profile, [target], self._plan().assignment.gate)
        device = selection.candidates[0].device if selection.candidates else "cpu"
        c = target.custom
        return ModelRef(sha256=target.sha256, file_name=target.name.rsplit("/", 1)[-1], target=target.name,
                        runtime=str(c.get("runtime", "")), precision=str(c.get("precision", "fp32")),
                        model=str(c.get("model", "")), version=str(c.get("version", "")), device=device,
                        entry=entry_for(c))

    def _served(self) -> ActiveModel | None:
        ref = self.slots.current()
        return ActiveModel(ref, self.slots.path(ref)) if ref is not None else None

    def _outcome(self) -> UpdateOutcome:
        j = self._journal
        try:
            current = self.slots.current()
        except SlotError:
            current = None
        return UpdateOutcome(deployment_id=j.deployment_id or "", status=final_status(j.flags), reason=j.reason,
                             current=current, gate_reports=tuple(self._gate_reports))

    # --- states: each does its work and names the event; the table picks the successor -----------

    def _do_verify(self) -> _Step:
        try:
            plan = self._plan()
        except (JournalError, TrustError, ValueError, KeyError, TypeError) as e:
            return _Step(Event.FAIL, f"plan_unreadable: {e}")
        a = plan.assignment
        if self.clock.now() >= a.expires_at:
            return _Step(Event.FAIL, f"expired: assignment {a.version} expired at {a.expires_at.isoformat()}")
        current = self.slots.current()
        variant_names = {t.name for t in plan.variants}
        if current is not None and current.target in variant_names and self.slots.has(current.sha256):
            return _Step(Event.NOOP, "already_active",
                         {"flags": replace(self._journal.flags, verified=True, already_active=True)})
        if plan.golden is None:
            return _Step(Event.FAIL, f"no_golden_set: release {a.release.model}/{a.release.version} signs none")
        selection = select(self.profile, plan.variants, a.gate)
        detail = {"candidates": [c.target.name for c in selection.candidates], "rejected": selection.reasons(),
                  "hardware_class": self.profile.hardware_class}
        if not selection.candidates:
            why = "; ".join(f"{name}: {r}" for name, r in selection.reasons().items()) or "no variants"
            return _Step(Event.FAIL, f"no_compatible_variant: {why}", detail=detail)
        names = tuple(c.target.name for c in selection.candidates)
        index = self._journal.candidate_index if names == self._journal.candidates else 0
        return _Step(Event.OK, None, {"candidates": names, "candidate_index": index,
                                      "flags": replace(self._journal.flags, verified=True)}, detail)

    def _do_download(self) -> _Step:
        plan = self._plan()
        target = self._candidate()
        golden = plan.golden
        assert golden is not None
        announced = [False]

        def progress(position: int, length: int) -> None:
            if not announced[0] and position * 2 >= length:
                announced[0] = True
                self._hook("download")

        try:
            self.stager.stage(golden, self.locator)
            result = self.stager.stage(target, self.locator, progress)
        except StagingError as e:
            return _Step(Event.FAIL, f"download_failed: {e.reason}: {e}")
        self._hook("staged")
        detail = {"target": target.name, "bytes_received": result.bytes_received, "attempts": result.attempts,
                  "resumed_from": result.resumed_from}
        return _Step(Event.OK, None, {"flags": replace(self._journal.flags, downloaded=True)}, detail)

    def _do_gate(self) -> _Step:
        plan = self._plan()
        target = self._candidate()
        golden = plan.golden
        assert golden is not None
        ref = self._ref_for(target)
        served = self._served()
        if served is not None and not served.path.exists():
            served = None
        gate_input = GateInput(
            candidate=target.name, runtime=ref.runtime, precision=ref.precision, device=ref.device,
            model_path=self.slots.path(ref),
            golden_path=self.slots.file_path(golden.sha256, golden.name.rsplit("/", 1)[-1]),
            hardware_class=self.profile.hardware_class,
            current_path=served.path if served else None,
            current_runtime=served.ref.runtime if served else None,
            current_device=served.ref.device if served else "cpu", runtime_extra=runtime_extra(target.custom))
        self._hook("gate")
        outcome = self.gate.evaluate(gate_input, plan.assignment.gate)
        report = {"report": outcome.report.to_dict(), "verdict": outcome.verdict.to_dict()}
        self._gate_reports.append(report)
        if outcome.verdict.passed:
            return _Step(Event.OK, None, {"rollback_to": ref_to_json(served.ref if served else None),
                                          "flags": replace(self._journal.flags, gate_passed=True)}, report)
        reason = f"gate_failed: {target.name}: {'; '.join(outcome.verdict.reasons)}"
        self.slots.discard(target.sha256)
        if self._journal.candidate_index + 1 < len(self._journal.candidates):
            return _Step(Event.NEXT, reason, {"candidate_index": self._journal.candidate_index + 1}, report)
        return _Step(Event.FAIL, reason, detail=report)

    def _do_activate(self) -> _Step:
        ref = self._ref_for(self._candidate())
        previous = ref_from_json(self._journal.rollback_to)
        # previous first: a crash between the two writes leaves both naming the old model.
        self.slots.set_previous(previous)
        self._hook("pointers")
        self.slots.set_current(ref)
        try:
            self.activator.activate(ActiveModel(ref, self.slots.path(ref)))
        except Exception as e:
            return _Step(Event.FAIL, f"activate_failed: {type(e).__name__}: {e}",
                         {"flags": replace(self._journal.flags, activated=True)})
        self._hook("activated")
        return _Step(Event.OK, None, {"flags": replace(self._journal.flags, activated=True)},
                     {"active": dataclasses.asdict(ref)})

    def _do_probation(self) -> _Step:
        plan = self._plan()
        served = self._served()
        if served is None:
            return _Step(Event.FAIL, "probation_failed: no model is served")
        result = self.probation.watch(served, plan.assignment.probation)
        if not result.passed:
            return _Step(Event.FAIL, f"probation_failed: {result.reason}", detail=dict(result.detail))
        return _Step(Event.OK, None, {"flags": replace(self._journal.flags, probation_passed=True)},
                     dict(result.detail))

    def _do_commit(self) -> _Step:
        # The commit point is this journal write: before it a crash resumes here (probation passed),
        # a failure rolls back; after it the new model stays whatever happens to the bookkeeping.
        j = replace(self._journal, flags=replace(self._journal.flags, committed=True))
        self.journal_file.save(j)
        self._journal = j
        self._hook("commit")
        try:
            previous = self.slots.previous()
            current = self.slots.current()
            if current is not None:
                self.activator.commit(ActiveModel(current, self.slots.path(current)))
            self.slots.set_previous(None)
            if previous is not None and (current is None or previous.sha256 != current.sha256):
                self.slots.discard(previous.sha256)
        except Exception as e:
            log.error("commit: releasing the previous model failed (cleanup will retry): %s", e)
        return _Step(Event.OK)

    def _do_rollback(self) -> _Step:
        target = ref_from_json(self._journal.rollback_to)
        if target is not None and not self.slots.has(target.sha256):
            return _Step(Event.FAIL, f"rollback_failed: slot {target.sha256} is gone",
                         {"flags": replace(self._journal.flags, rollback_failed=True)})
        served = self.slots.current()
        self.slots.set_current(target)
        try:
            self.activator.rollback(ActiveModel(target, self.slots.path(target)) if target else None)
        except Exception as e:
            # The activator still serves the new model: the pointer must say so, or a restart would
            # load a model that just failed to come back.
            self.slots.set_current(served)
            return _Step(Event.FAIL, f"rollback_failed: {type(e).__name__}: {e}",
                         {"flags": replace(self._journal.flags, rollback_failed=True)})
        self.slots.set_previous(None)
        return _Step(Event.OK, None, {"flags": replace(self._journal.flags, rolled_back=True)},
                     {"active": dataclasses.asdict(target) if target else None})

    def _do_failure(self) -> _Step:
        return _Step(Event.OK)

    def _do_cleanup(self) -> _Step:
        self.stager.clear()
        current = self.slots.current()
        if self._journal.flags.committed or self._journal.flags.rolled_back or not self._journal.flags.activated:
            self.slots.set_previous(None)
        keep = {r.sha256 for r in (current, self.slots.previous()) if r is not None}
        for sha in self.slots.slots():
            if sha not in keep:
                self.slots.discard(sha)
        return _Step(Event.OK, None, detail={"status": final_status(self._journal.flags).value})
