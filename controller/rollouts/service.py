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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from securesystemslib.signer import Signer
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from agent import wire
from controller.db.models import Device
from controller.rollouts.assigner import AssignmentPolicies, DirectorAssigner
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.plan import DeviceInfo, Selector
from controller.rollouts.sql import PgRolloutLeases, SqlAssignmentLedger, SqlRolloutStore
from manifests.assignment import ReleaseRef, TargetPin


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
) -> RolloutEngine:
    """The app's rollout engine on its database and MQTT bridge (`ctx.extras["bridge"]`)."""
    bridge = ctx.extras["bridge"]
    assigner = DirectorAssigner(SqlAssignmentLedger(ctx.session_factory), signers, bridge, targets_for,
                                policies_for=policies_for, director_roots=director_roots)
    engine = RolloutEngine(SqlRolloutStore(ctx.session_factory), DatabaseFleetView(ctx.session_factory), assigner,
                           leases=PgRolloutLeases(ctx.engine))
    bridge.sink = EngineTee(bridge.sink, engine)
    ctx.extras["rollout_engine"] = engine
    ctx.extras["assigner"] = assigner
    return engine
