"""The rollout engine plugged into a running controller: fleet from the registry, signed assignments out.

A controller app that already runs a rollout engine (`ctx.extras["rollout_engine"]`) is used as it is,
with the caller's assignment policies; otherwise `attach_rollouts` builds one from the project's parts and puts it there, so the dashboard and
the demo see the same engine:

| port       | implementation here                                                           |
|------------|-------------------------------------------------------------------------------|
| FleetView  | `RegistryFleet`: active devices, tags, hardware class, presence, running release |
| Assigner   | `controller.rollouts.assigner.DirectorAssigner` over a file ledger: release targets from the registry, signed with the director key, published retained through the app's MQTT bridge |
| events     | `TeeSink`: the bridge's device events go to the registry *and* the engine     |
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select

from agent import wire
from controller.db.models import Device, ModelRelease
from controller.rollouts import DeviceInfo, FileRolloutStore, RolloutEngine, RolloutError, Selector
from controller.rollouts.assigner import AssignmentPolicies, DirectorAssigner, FileAssignmentLedger
from manifests import assignment as A
from manifests.keyring import Keyring


class RegistryFleet:
    def __init__(self, session_factory: Any) -> None:
        self._sessions = session_factory

    def targeted(self, selector: Selector) -> Mapping[str, DeviceInfo]:
        out = {}
        with self._sessions() as session:
            for d in session.scalars(select(Device).where(Device.status == "active")):
                release = (A.ReleaseRef(d.current_model, d.current_version)
                           if d.current_model and d.current_version else None)
                info = DeviceInfo(d.id, online=bool(d.online), tags=frozenset(t.tag for t in d.tags),
                                  hardware_class=d.hardware_class, active_release=release)
                if selector.matches(info):
                    out[d.id] = info
        return out


def release_targets(session_factory: Any) -> Any:
    """`targets_for` of the director assigner: a published release's offered variants and golden set."""

    def targets_for(release: A.ReleaseRef) -> tuple[A.TargetPin, ...]:
        with session_factory() as session:
            row = session.scalar(select(ModelRelease).where(ModelRelease.name == release.model,
                                                            ModelRelease.version == release.version))
            if row is None or row.status != "published":
                raise RolloutError(f"release {release.model} {release.version} is not published")
            pins = [A.TargetPin(v.target_path, v.length, v.sha256) for v in row.variants
                    if v.offered and v.artifact_key is not None]
            golden = (row.report or {}).get("golden") or {}
            pins.append(A.TargetPin(golden["target"], int(golden["length"]), golden["sha256"]))
        return tuple(pins)

    return targets_for


class TeeSink:
    """The bridge's FleetSink: the registry first, then the rollout engine's queue."""

    def __init__(self, registry_sink: Any, engine: RolloutEngine) -> None:
        self.registry_sink = registry_sink
        self.engine = engine

    def on_status(self, status: wire.Status) -> None:
        self.registry_sink.on_status(status)

    def on_event(self, event: wire.Event) -> None:
        self.registry_sink.on_event(event)
        self.engine.handle_event(event)

    def on_presence(self, presence: wire.Presence) -> None:
        self.registry_sink.on_presence(presence)


def attach_rollouts(ctx: Any, keyring: Keyring, state_dir: Path, policies: Mapping[str, Any] | None = None,
                    stop: threading.Event | None = None, interval_s: float = 0.5) -> RolloutEngine:
    """The app's rollout engine, building, attaching and driving one (until `stop`) when the app has none."""
    existing = ctx.extras.get("rollout_engine")
    if existing is not None:
        assigner = ctx.extras.get("assigner")
        if policies and assigner is not None and hasattr(assigner, "policies_for"):
            fixed_policies = AssignmentPolicies(**dict(policies))
            assigner.policies_for = lambda release, rollout_id: fixed_policies
        return existing  # type: ignore[no-any-return]
    bridge = ctx.extras["bridge"]
    state_dir.mkdir(parents=True, exist_ok=True)
    fixed = AssignmentPolicies(**dict(policies or {}))
    assigner = DirectorAssigner(FileAssignmentLedger(state_dir / "ledger"), keyring.signers("director"), bridge,
                                release_targets(ctx.session_factory), policies_for=lambda release, rollout: fixed,
                                director_roots=keyring.root_history("director")[1:])
    engine = RolloutEngine(FileRolloutStore(state_dir / "rollouts"), RegistryFleet(ctx.session_factory), assigner)
    bridge.sink = TeeSink(bridge.sink, engine)
    ctx.extras["rollout_engine"] = engine
    ctx.extras["assigner"] = assigner
    if stop is not None:
        threading.Thread(target=engine.run, args=(stop, interval_s), name="rollout-engine", daemon=True).start()
    return engine
