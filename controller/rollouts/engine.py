"""The rollout engine: runs the pure state machine against the store, the fleet and the broker.

Persist, then act. Each step loads the record, lets `machine.tick` decide, saves the result, and only
then publishes what the saved record asks for (devices in `assigning` or `reverting`), saving again
after each batch. A controller killed anywhere in between finds the same devices still waiting and
publishes again; the `Assigner` is idempotent for (device, release, rollout), so a repeat costs one
retained message at most and never a second version bump the device would act on.

Device events and statuses arrive on the MQTT bridge's thread; `handle_event` / `handle_status` only
queue them. Events queued but not yet folded in die with the process; the retained statuses every
device re-sends to a reconnecting controller let the records catch up (`machine.apply_status`). They are folded into
the records on the engine's own thread, one rollout at a time, under one lock, so a tick and an event
never race on the same record within a replica (across replicas the store's revision check does).

Ports:

| port       | role                                                             |
|------------|------------------------------------------------------------------|
| RolloutStore | persisted records (`store.py`)                                 |
| FleetView  | which enrolled devices a selector matches now, online or not     |
| Assigner   | sign + publish a new assignment naming a release; returns its version |
| Leases     | optional: which rollouts this replica drives (PostgreSQL advisory locks) |
| admit      | optional: refuses a spec before anything is stored (the app: `registry.floors.floor_admission`) |

A rollout marked `rollback` must name a release the fleet already ran (a device runs it now, ran it
before a rollout, or a rollout delivered it): its assignments waive the device gate's accuracy-drop
check, and that waiver is only sound for a release that was proven in the field.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from agent import wire
from controller.rollouts import machine
from controller.rollouts.errors import PlanError, RolloutError, StaleRecord
from controller.rollouts.plan import DeviceInfo, RolloutSpec, Selector
from controller.rollouts.records import RolloutRecord, new_rollout
from controller.rollouts.signals import DeviceState
from controller.rollouts.store import RolloutStore
from manifests.assignment import ReleaseRef

log = logging.getLogger("controller.rollouts")


class FleetView(Protocol):
    def targeted(self, selector: Selector) -> Mapping[str, DeviceInfo]:
        """Every enrolled device the selector matches, keyed by id, with its presence and release."""


class Assigner(Protocol):
    def assign(self, device_id: str, release: ReleaseRef, rollout_id: str, *, rollback: bool = False) -> int:
        """Sign and publish (retained) an assignment naming `release`; return its version.

        Must be idempotent: if the device's newest assignment already names this release for this
        rollout (and is as much a rollback), republish it and return its version instead of issuing a
        higher one. `rollback`: a return to a release the fleet already ran; the assignment waives
        the gate's accuracy-drop check against the current model, and nothing else.
        """

    def flush(self, timeout_s: float = 60.0) -> None:
        """Return once the broker acknowledged every assignment published so far."""


class Leases(Protocol):
    def holds(self, rollout_id: str) -> bool:
        """True if this replica may drive the rollout now (e.g. `sql.PgRolloutLeases`)."""


class RolloutEngine:
    def __init__(
        self,
        store: RolloutStore,
        fleet: FleetView,
        assigner: Assigner,
        clock: Callable[[], float] = time.time,
        save_every: int = 200,
        leases: Leases | None = None,
        admit: Callable[[RolloutSpec], None] | None = None,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.assigner = assigner
        self.clock = clock
        self.save_every = save_every
        self.leases = leases
        self.admit = admit
        self._events: queue.SimpleQueue[wire.Event | wire.Status] = queue.SimpleQueue()
        self._lock = threading.RLock()

    # -- operator-facing ----------------------------------------------------------------------------

    def create(self, rollout_id: str, spec: RolloutSpec, actor: str) -> RolloutRecord:
        if self.admit is not None:
            self.admit(spec)
        devices = list(self.fleet.targeted(spec.selector).values())
        if not devices:
            raise PlanError(f"rollout {rollout_id}: the selector matches no device")
        if spec.rollback and not self._ran_before(spec.release, devices):
            raise PlanError(f"rollout {rollout_id}: a rollback must name a release the fleet already ran; "
                            f"{spec.release.model} {spec.release.version} runs on no device and no rollout "
                            "delivered it")
        with self._lock:
            return self.store.create(new_rollout(rollout_id, spec, devices, self.clock(), actor))

    def command(self, rollout_id: str, name: str, actor: str, reason: str | None = None) -> RolloutRecord:
        """pause / resume / abort / rollback; rollback publishes the revert assignments right away."""
        with self._lock:
            record = self.store.load(rollout_id)
            record = self.store.save(machine.command(record, name, actor, self.clock(), reason))
            return self._publish_pending(record)

    def _ran_before(self, release: ReleaseRef, devices: list[DeviceInfo]) -> bool:
        if any(d.active_release == release for d in devices):
            return True
        for rollout_id in reversed(self.store.list_ids()):  # newest first: a recent rollout is the usual proof
            record = self.store.load(rollout_id)
            if record.spec.release == release and any(
                    p.state == DeviceState.SUCCEEDED for p in record.devices.values()):
                return True
            if any(p.previous_release == release for p in record.devices.values()):
                return True
        return False

    # -- inputs -------------------------------------------------------------------------------------

    def handle_event(self, event: wire.Event) -> None:
        """Called on the bridge's thread: queue only."""
        if event.rollout_id is not None:
            self._events.put(event)

    def handle_status(self, status: wire.Status) -> None:
        """Called on the bridge's thread: queue only (the retained status lets a restart catch up)."""
        if status.rollout_id is not None:
            self._events.put(status)

    # -- the loop -----------------------------------------------------------------------------------

    def step(self) -> None:
        """Fold queued events in, then advance every active rollout once."""
        with self._lock:
            self._drain_events()
            for rollout_id in self.store.list_ids(active_only=True):
                if self.leases is not None and not self.leases.holds(rollout_id):
                    continue  # another replica drives this one
                try:
                    self._advance(rollout_id)
                except StaleRecord:
                    log.info("rollout %s changed under us; next step retries", rollout_id)
                except RolloutError as e:
                    log.error("rollout %s: %s", rollout_id, e)

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # keep driving other rollouts; the error is in the log
                log.exception("rollout engine step failed")
            stop.wait(interval_s)

    def _drain_events(self) -> None:
        by_rollout: dict[str, list[wire.Event | wire.Status]] = {}
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            assert event.rollout_id is not None
            by_rollout.setdefault(event.rollout_id, []).append(event)
        for rollout_id, events in by_rollout.items():
            try:
                record = self.store.load(rollout_id)
            except RolloutError:
                continue  # an event about a rollout this controller does not know
            now = self.clock()
            updated = record
            for event in events:
                if isinstance(event, wire.Event):
                    updated = machine.apply_event(updated, event, now)
                else:
                    updated = machine.apply_status(updated, event, now)
            if updated is not record:
                self.store.save(updated)

    def _advance(self, rollout_id: str) -> None:
        record = self.store.load(rollout_id)
        fleet = self.fleet.targeted(record.spec.selector)
        decided = machine.tick(record, fleet, self.clock())
        if decided != record:
            record = self.store.save(decided)
        self._publish_pending(record)

    def _publish_pending(self, record: RolloutRecord) -> RolloutRecord:
        work = [(d, False) for d in record.needs_assignment()] + [(d, True) for d in record.needs_revert()]
        for batch in _batches(work, self.save_every):
            for device_id, revert in batch:
                progress = record.devices[device_id]
                release = progress.previous_release if revert else record.spec.release
                assert release is not None
                version = self.assigner.assign(device_id, release, record.rollout_id,
                                               rollback=revert or record.spec.rollback)
                record = machine.confirm_published(record, device_id, version, self.clock(), revert=revert)
            self.assigner.flush()  # never record as published what the broker has not acknowledged
            record = self.store.save(record)
        return record


def _batches(items: list[tuple[str, bool]], size: int) -> list[list[tuple[str, bool]]]:
    iterator = iter(items)
    return [list(chunk) for chunk in iter(lambda: list(itertools.islice(iterator, size)), [])]
