"""What the director signs for a rollback: the release's gate policy with only the accuracy-drop check
waived, decoded from the real signed envelope a device would verify."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from agent import wire
from controller.rollouts import FileRolloutStore, RolloutEngine, RolloutState
from controller.rollouts.assigner import AssignmentPolicies, DirectorAssigner, FileAssignmentLedger
from controller.rollouts.errors import PlanError
from controller.rollouts.signals import DeviceState
from manifests import director
from manifests.assignment import Assignment, GatePolicy, ReleaseRef, TargetPin, from_dict
from manifests.keyring import Keyring

from .sim import NEW, OLD, STREAM, fleet_of, spec
from .test_engine import Clock, Fleet, _event


class Acked:
    def is_published(self) -> bool:
        return True


class Broker:
    """Publisher port: keeps the newest retained payload per device, as the broker would."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}

    def publish_assignment(self, device_id: str, signed_payload: bytes) -> Acked:
        self.retained[device_id] = signed_payload
        return Acked()


def pins(release: ReleaseRef) -> list[TargetPin]:
    return [TargetPin(f"models/{release.model}/{release.version}/ort-fp32.onnx", 100, "ab" * 32)]


def floors(release: ReleaseRef, rollout_id: str | None) -> AssignmentPolicies:
    """Each release's own accuracy floor, as `service.release_policies` gives it."""
    return AssignmentPolicies(gate=GatePolicy(min_accuracy={"1": 0.8, "2": 0.95}[release.version],
                                              max_latency_regression_ratio=2.0))


def signed(payload: bytes, keys: Keyring) -> Assignment:
    """The assignment a device would accept: the envelope's signature checked against the director root."""
    envelope = director.open_envelope(payload)
    director.check_signature(Metadata[Root].from_bytes(keys.root_history("director")[0]).signed, envelope)
    return from_dict(envelope.signed)


def test_revert_and_rollback_assignments_carry_the_relaxed_gate_and_nothing_else(tmp_path: Path) -> None:
    keys = Keyring.create(tmp_path / "keys")
    broker, clock = Broker(), Clock()
    assigner = DirectorAssigner(FileAssignmentLedger(tmp_path / "ledger"), keys.signers("director"), broker,
                                pins, policies_for=floors, clock=clock)
    fleet = Fleet(fleet_of(6))
    engine = RolloutEngine(FileRolloutStore(tmp_path / "rollouts"), fleet, assigner, clock)
    engine.create("r1", spec(auto_rollback=True), "alice")
    engine.step()
    (canary,) = broker.retained
    forward = signed(broker.retained[canary], keys)
    assert forward.release == NEW and forward.gate == floors(NEW, "r1").gate
    assert forward.gate.max_accuracy_drop == 0.02  # an ordinary assignment keeps the check

    engine.handle_event(_event(canary, "probation_failed", forward.version, 1))
    engine.step()
    record = engine.store.load("r1")
    assert record.state == RolloutState.ROLLED_BACK and record.devices[canary].state == DeviceState.REVERTED
    revert = signed(broker.retained[canary], keys)
    assert revert.release == OLD and revert.version > forward.version and revert.rollout_id == "r1"
    assert revert.gate.max_accuracy_drop is None
    # the rest of the gate stands: OLD's own accuracy floor and the latency budget
    assert revert.gate == GatePolicy(min_accuracy=0.8, max_latency_regression_ratio=2.0, max_accuracy_drop=None)

    # the operator's rollback of a whole rollout reverts every device that got the new release
    engine.create("r2", spec(), "alice")
    engine.step()
    (canary2,) = [d for d, p in engine.store.load("r2").devices.items() if p.state == DeviceState.ASSIGNED]
    version = signed(broker.retained[canary2], keys).version
    engine.handle_event(wire.Event(canary2, STREAM, 2, 0.0, "committed", version, "r2", NEW.model, NEW.version,
                                   None, {}))
    engine.step()
    engine.command("r2", "rollback", "bob")
    operator_revert = signed(broker.retained[canary2], keys)
    assert operator_revert.release == OLD and operator_revert.gate.max_accuracy_drop is None

    # republishing is idempotent: the same rollback envelope, not a new version
    before = dict(broker.retained)
    assert assigner.assign(canary2, OLD, "r2", rollback=True) == operator_revert.version
    assert broker.retained == before
    # while an ordinary assignment of the same release in the same rollout is a new, strict one
    assert assigner.assign(canary2, OLD, "r2") == operator_revert.version + 1
    assert signed(broker.retained[canary2], keys).gate.max_accuracy_drop == 0.02


def test_rollback_flag_is_persisted_and_records_without_it_read_as_ordinary_rollouts() -> None:
    from controller.rollouts.codec import spec_from_json, spec_to_json

    marked = replace(spec(), release=OLD, rollback=True)
    assert spec_from_json(spec_to_json(marked)) == marked
    older = spec_to_json(spec())
    del older["rollback"]  # written before the field existed
    assert spec_from_json(older).rollback is False
    with pytest.raises(PlanError, match="rollback must be true or false"):
        spec_from_json({**spec_to_json(spec()), "rollback": "yes"})
