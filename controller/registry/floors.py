"""Blocking known-bad releases: the signed per-model release floor, as an operator sets and meets it.

    PUT /api/v1/models/{model}/release-floor  {"below": 4}        (admin; `edgefleet model block`)
      └─ block_releases ─ checks ─ RepositoryPublisher.set_release_floor (release key, publisher lock)
                        └─ new targets version: every device refuses release counters below 4
    POST /api/v1/rollouts  ─ rollout engine's admission ─ floor_admission: 422 naming both numbers

A floor is never lowered (devices keep the highest they saw), so a mistake cannot be undone: the
checks here refuse what is almost certainly a typo (a floor beyond the next release's counter would
also block releases nobody has built yet). A floor does not uninstall what devices run; the answer
lists the devices still running a blocked release so the operator can roll them forward.

Deliberately not here: the signing itself (`manifests.repository.ImageRepository.set_release_floor`)
and what a device does with the floor (`manifests.verify`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Device, ModelRelease
from controller.errors import InvalidInput, NotFound, Unavailable
from controller.registry.meta import NAME_RE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FloorChange:
    """What blocking did: the floor before and after, and who is affected."""

    model: str
    release_floor: int
    previous_floor: int
    targets_version: int | None  # None: nothing was signed (the floor was already there)
    blocked_versions: list[str] = field(default_factory=list)
    devices_on_blocked: list[str] = field(default_factory=list)


def block_releases(session: Session, publisher: Any, model: str, below: int) -> FloorChange:
    """Sign `below` as the release floor of `model` (releases with a lower counter are refused)."""
    if not NAME_RE.match(model):
        raise InvalidInput(f"model name {model!r} must match {NAME_RE.pattern}")
    if below < 1:
        raise InvalidInput(f"a release floor must be at least 1, got {below}")
    highest = session.scalar(select(func.max(ModelRelease.release_counter)).where(ModelRelease.name == model))
    if highest is None:
        raise NotFound(f"no release of model {model!r} is registered")
    if below > highest + 1:
        raise InvalidInput(
            f"release counters of {model!r} go up to {highest}; a floor of {below} would also block the next "
            f"{below - highest - 1} releases, and floors are never lowered (use --below {highest + 1} to "
            "block every release so far)",
            details={"model": model, "below": below, "highest_release_counter": highest},
        )
    if not hasattr(publisher, "set_release_floor"):
        raise Unavailable("this controller's repository publisher cannot sign release floors")
    previous = int(publisher.release_floors().get(model, 0))
    version = None
    if below != previous:
        version = publisher.set_release_floor(model, below)  # Conflict when lower, or the key is offline
        log.warning("release floor of %s raised from %d to %d (targets version %s)", model, previous, below, version)
    blocked = list(session.scalars(
        select(ModelRelease.version)
        .where(ModelRelease.name == model, ModelRelease.release_counter < below)
        .order_by(ModelRelease.release_counter)
    ))
    devices = list(session.scalars(
        select(Device.id)
        .where(Device.current_model == model, Device.current_version.in_(blocked))
        .order_by(Device.id)
    )) if blocked else []
    return FloorChange(model, below, previous, version, blocked, devices)


def floor_admission(
    session_factory: sessionmaker[Session], floors: Callable[[], Mapping[str, int]]
) -> Callable[[Any], None]:
    """The rollout engine's `admit`: refuse a release whose counter is below its model's signed floor.

    Devices would refuse every assignment of it (`release_counter_downgrade`); a rollout of it could
    only halt. A release this registry does not know, or floors that cannot be read right now, are
    left to the assigner and the devices, which refuse them on their own.
    """
    from controller.rollouts.errors import PlanError

    def admit(spec: Any) -> None:
        release = spec.release
        with session_factory() as session:
            counter = session.scalar(select(ModelRelease.release_counter).where(
                ModelRelease.name == release.model, ModelRelease.version == release.version))
        if counter is None:
            return
        try:
            floor = int(floors().get(release.model, 0))
        except Exception as e:  # the repository is the authority; devices check the floor anyway
            log.warning("release floors unreadable; rollout of %s %s not checked: %s", release.model,
                        release.version, e)
            return
        if counter < floor:
            raise PlanError(
                f"release {release.model} {release.version} has release counter {counter}, below the signed "
                f"release floor {floor} of {release.model!r}: every device refuses it (blocked)"
            )

    return admit
