"""Assemble the rollout engine for a controller app: database store and ledger, fleet from the device
registry, director signing, the app's MQTT bridge.

    engine = build_engine(ctx, signers=keyring.signers("director"), targets_for=...)
    threading.Thread(target=engine.run, args=(stop, 1.0), daemon=True).start()

`build_engine` puts the engine on `ctx.extras["rollout_engine"]`, where the API routes and the
dashboard find it, and tees the bridge's device messages into it (the registry sink keeps receiving
them first). Which release targets and policies an assignment carries are the caller's to give:
they come from the model registry, which this package does not depend on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from agent import wire
from controller.db.models import Device, ModelRelease
from controller.rollouts import device_policies
from controller.rollouts.assigner import AssignmentPolicies, DirectorAssigner
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.errors import RolloutError
from controller.rollouts.models import RolloutRow
from controller.rollouts.plan import DeviceInfo, RolloutSpec, Selector
from controller.rollouts.sql import PgRolloutLeases, SqlAssignmentLedger, SqlRolloutStore
from manifests.assignment import ReleaseRef, TargetPin

log = logging.getLogger(__name__)


class DatabaseFleetView:
    """`FleetView` over the device registry: active devices, tags, hardware class, presence, release."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def targeted(self, selector: Selector) -> Mapping[str, DeviceInfo]:
        out: dict[str, DeviceInfo] = {}
        with self._sessions() as session:
            rows = session.scalars(select(Device).where(Device.status == "active").options(selectinload(Device.tags)))
            for d in rows:
                release = (ReleaseRef(d.current_model, d.current_version)
                           if d.current_model and d.current_version else None)
                info = DeviceInfo(d.id, online=bool(d.online), tags=frozenset(t.tag for t in d.tags),
                                  hardware_class=d.hardware_class, active_release=release)
                if selector.matches(info):
                    out[d.id] = info
        return out


class EngineTee:
    """A `FleetSink` that hands every message to the existing sink, then events and statuses to the engine."""

    def __init__(self, inner: Any, engine: RolloutEngine) -> None:
        self.inner = inner
        self.engine = engine

    def on_status(self, status: wire.Status) -> None:
        self.inner.on_status(status)
        self.engine.handle_status(status)

    def on_event(self, event: wire.Event) -> None:
        self.inner.on_event(event)
        self.engine.handle_event(event)

    def on_presence(self, presence: wire.Presence) -> None:
        self.inner.on_presence(presence)


def build_engine(
    ctx: Any,
    *,
    signers: Sequence[Signer],
    targets_for: Callable[[ReleaseRef], Sequence[TargetPin]],
    policies_for: Callable[[ReleaseRef, str | None], AssignmentPolicies] | None = None,
    director_roots: Sequence[bytes] = (),
    admit: Callable[[RolloutSpec], None] | None = None,
) -> RolloutEngine:
    """The app's rollout engine on its database and MQTT bridge (`ctx.extras["bridge"]`)."""
    bridge = ctx.extras["bridge"]
    assigner = DirectorAssigner(SqlAssignmentLedger(ctx.session_factory), signers, bridge, targets_for,
                                policies_for=policies_for, director_roots=director_roots)
    engine = RolloutEngine(SqlRolloutStore(ctx.session_factory), DatabaseFleetView(ctx.session_factory), assigner,
                           leases=PgRolloutLeases(ctx.engine), admit=admit)
    bridge.sink = EngineTee(bridge.sink, engine)
    ctx.extras["rollout_engine"] = engine
    ctx.extras["assigner"] = assigner
    return engine


def release_targets(session_factory: sessionmaker[Session]) -> Callable[[ReleaseRef], tuple[TargetPin, ...]]:
    """`targets_for` of the director assigner: a published release's offered variants and its golden set."""
    def targets_for(release: ReleaseRef) -> tuple[TargetPin, ...]:
        with session_factory() as session:
            row = session.scalar(
                select(ModelRelease).where(
                    ModelRelease.name == release.model, ModelRelease.version == release.version
                )
            )
            if row is None or row.status != "published":
                raise RolloutError(f"release {release.model} {release.version} is not published")
            pins = [
                TargetPin(v.target_path, v.length, v.sha256)
                for v in row.variants
                if v.offered and v.artifact_key is not None
            ]
            golden = (row.report or {}).get("golden") or {}
            if golden.get("target"):
                pins.append(TargetPin(golden["target"], int(golden["length"]), golden["sha256"]))
        return tuple(pins)

    return targets_for


def release_policies(
    session_factory: sessionmaker[Session], defaults: AssignmentPolicies | None = None
) -> Callable[[ReleaseRef, str | None], AssignmentPolicies]:
    """`policies_for`: fleet defaults, then the release's accuracy floor, then the rollout's overrides.

    The order runs from general to specific: the defaults hold for every device, the floor is a fact
    about one release measured at upload, and an override is an operator's explicit decision for this
    one rollout (a risky model's longer probation, a confidence-drop limit for models whose calibration
    is known), so the most specific explicit value wins and every field nobody set falls through. A
    rollout without overrides therefore signs exactly the policies it signed before overrides existed.

    The overrides reach every assignment the rollout signs, its reverts included (the assigner then
    waives the accuracy-drop check for those as always), with one exception: an overridden
    `gate.min_accuracy` is a floor for the rollout's own release, so a revert to another release keeps
    that release's own floor rather than being held to the new model's.
    """
    base = defaults or AssignmentPolicies()

    def policies_for(release: ReleaseRef, rollout_id: str | None) -> AssignmentPolicies:
        with session_factory() as session:
            floor = session.scalar(
                select(ModelRelease.min_accuracy).where(
                    ModelRelease.name == release.model, ModelRelease.version == release.version
                )
            )
            rollout = None if rollout_id is None else session.execute(
                select(RolloutRow.device_policies, RolloutRow.release_model, RolloutRow.release_version)
                .where(RolloutRow.id == rollout_id)
            ).one_or_none()
        policies = base
        if floor is not None:
            policies = dataclasses.replace(base, gate=dataclasses.replace(base.gate, min_accuracy=floor))
        if rollout is None or rollout.device_policies is None:
            return policies
        overrides = device_policies.parse(rollout.device_policies)
        own_release = ReleaseRef(rollout.release_model, rollout.release_version) == release
        return overrides.apply(policies, own_release=own_release)

    return policies_for


class EngineRunner:
    """Drives `engine.run` on a thread for as long as the app runs (start/stop like other services)."""

    def __init__(self, engine: RolloutEngine, interval_s: float = 1.0) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self.engine.run, args=(self._stop, self.interval_s), name="rollout-engine", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None


def attach_to_app(ctx: Any, keys_dir: Path, *, interval_s: float = 1.0) -> EngineRunner | None:
    """The app's rollout engine when it has an MQTT bridge and a keyring with the director key; else None.

    Without either, the rollout routes answer 503 and say why; nothing else in the controller changes.
    """
    from manifests.errors import KeyringError
    from manifests.keyring import Keyring

    if "bridge" not in ctx.extras or not (keys_dir / "director-root").is_dir():
        return None
    try:
        keyring = Keyring(keys_dir)
        signers = keyring.signers("director")
        director_roots = keyring.root_history("director")[1:]
    except KeyringError as e:
        log.warning("rollouts disabled: director key unusable: %s", e)
        return None
    from controller.registry.floors import floor_admission

    floors = getattr(getattr(getattr(ctx, "registry", None), "publisher", None), "release_floors", None)
    engine = build_engine(
        ctx,
        signers=signers,
        targets_for=release_targets(ctx.session_factory),
        policies_for=release_policies(ctx.session_factory),
        director_roots=director_roots,
        # a release below its model's signed floor is refused at creation (422 naming both numbers)
        admit=floor_admission(ctx.session_factory, floors) if floors is not None else None,
    )
    return EngineRunner(engine, interval_s)
