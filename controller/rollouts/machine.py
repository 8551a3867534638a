"""The rollout state machine: pure functions from (record, inputs, now) to the next record.

All transitions stand in one table, `TRANSITIONS`; no function picks a successor state on its own.

```
 PENDING ─start─▶ RUNNING(k) ─settled─▶ SOAKING(k) ─soaked─▶ RUNNING(k+1) … ─soaked_last─▶ COMPLETED
                      │                     │
                      ├──breached──────────┴──▶ HALTED ──resume──▶ RUNNING(k)   (failures so far accepted)
                      └──breached_rollback─────▶ ROLLED_BACK                      (wave k reverted)
 operator: pause (→ PAUSED, resume returns), abort (→ ABORTED), rollback (→ ROLLED_BACK, all reverted)
```

`tick` is level-triggered: it looks at the record and the fleet as they are now, so calling it twice
changes nothing the second time, and a restarted controller resumes by calling it again. Device
outcomes come in through `apply_event`; stale events (older assignment versions, other rollouts) are
ignored, and a device that already failed never turns back into a success.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from agent import wire
from controller.rollouts.errors import InvalidCommand
from controller.rollouts.plan import DeviceInfo
from controller.rollouts.records import DeviceProgress, RolloutRecord, RolloutState, Transition
from controller.rollouts.signals import DeviceState, WaveHealth, classify, wave_health

S = RolloutState
_ACTIVE = (S.PENDING, S.RUNNING, S.SOAKING, S.PAUSED, S.HALTED)
RESUME_PREVIOUS = "previous"  # sentinel target: back to the state before the pause

TRANSITIONS: dict[tuple[RolloutState, str], RolloutState | str] = {
    (S.PENDING, "start"): S.RUNNING,
    (S.RUNNING, "settled"): S.SOAKING,
    (S.RUNNING, "breached"): S.HALTED,
    (S.RUNNING, "breached_rollback"): S.ROLLED_BACK,
    (S.SOAKING, "breached"): S.HALTED,
    (S.SOAKING, "breached_rollback"): S.ROLLED_BACK,
    (S.SOAKING, "soaked"): S.RUNNING,
    (S.SOAKING, "soaked_last"): S.COMPLETED,
    (S.PENDING, "pause"): S.PAUSED,
    (S.RUNNING, "pause"): S.PAUSED,
    (S.SOAKING, "pause"): S.PAUSED,
    (S.PAUSED, "resume"): RESUME_PREVIOUS,
    (S.HALTED, "resume"): S.RUNNING,
    **{(state, "abort"): S.ABORTED for state in _ACTIVE},
    **{(state, "rollback"): S.ROLLED_BACK for state in (S.RUNNING, S.SOAKING, S.PAUSED, S.HALTED)},
}
OPERATOR_COMMANDS = ("pause", "resume", "abort", "rollback")


def apply_event(record: RolloutRecord, event: wire.Event, now: float) -> RolloutRecord:
    """Fold one device event into the record (returns the same record when it changes nothing)."""
    progress = record.devices.get(event.device_id)
    # Terminal rollouts still record late outcomes (a device back from offline): progress stays truthful.
    if event.rollout_id != record.rollout_id or progress is None:
        return record
    if progress.state in (DeviceState.PLANNED, DeviceState.REVERTING, DeviceState.REVERTED):
        return record
    if (event.assignment_version is not None and progress.assignment_version is not None
            and event.assignment_version < progress.assignment_version):
        return record  # about an assignment this rollout already superseded
    outcome = classify(event.kind, event.details, record.spec.policy, event.reason)
    if outcome is None or progress.state == DeviceState.FAILED:
        return record
    if progress.state == DeviceState.SUCCEEDED and outcome.state != DeviceState.FAILED:
        return record
    if outcome.state == progress.state and outcome.reason == progress.reason:
        return record
    changed = replace(progress, state=outcome.state, reason=outcome.reason, updated_at=now)
    return record.with_devices({event.device_id: changed})


def apply_status(record: RolloutRecord, status: wire.Status, now: float) -> RolloutRecord:
    """Catch up from a device's retained status (level-triggered), for events this controller lost.

    Events are consumed before they are persisted; a controller killed in between loses them, but on
    reconnect it receives every device's retained status again. A status names the assignment version
    and, once the update ended (`IDLE`), its result: an error or the release now active. It carries no
    ML figures, so a regression that only an event reported cannot be recovered from the status.
    """
    progress = record.devices.get(status.device_id)
    if (status.rollout_id != record.rollout_id or progress is None or status.assignment_version is None
            or status.assignment_version != progress.assignment_version):
        return record
    if progress.state not in (DeviceState.ASSIGNED, DeviceState.INSTALLING, DeviceState.TIMED_OUT):
        return record
    release = record.spec.release
    if status.state.upper() != "IDLE":
        state, reason = DeviceState.INSTALLING, None
    elif status.last_error:
        state, reason = DeviceState.FAILED, f"{status.last_error.split(':')[0]}: {status.last_error}"
    elif status.active is not None and (status.active.model, status.active.version) == (release.model,
                                                                                        release.version):
        state, reason = DeviceState.SUCCEEDED, None
    else:
        return record
    if state == progress.state:
        return record
    return record.with_devices({status.device_id: replace(progress, state=state, reason=reason, updated_at=now)})


def tick(record: RolloutRecord, fleet: Mapping[str, DeviceInfo], now: float) -> RolloutRecord:
    """Advance as far as the current facts allow. `fleet`: the devices the selector matches now."""
    record = _admit_joiners(record, fleet, now)
    for _ in range(2 * len(record.spec.waves) + 4):  # bounded: each step moves forward
        if record.state not in (S.PENDING, S.RUNNING, S.SOAKING):
            return record
        record = _refresh_timers(record, fleet, now)
        trigger = _trigger(record, fleet, now)
        if trigger is None:
            return record
        record = _fire(record, trigger, now, actor="engine")
    return record


def command(record: RolloutRecord, name: str, actor: str, now: float, reason: str | None = None) -> RolloutRecord:
    """An operator action; raises InvalidCommand when the table does not allow it from here."""
    if name not in OPERATOR_COMMANDS:
        raise InvalidCommand(f"unknown rollout command {name!r}; expected one of {OPERATOR_COMMANDS}")
    if (record.state, name) not in TRANSITIONS:
        raise InvalidCommand(f"cannot {name} rollout {record.rollout_id} while it is {record.state.value}")
    return _fire(record, name, now, actor=actor, reason=reason)


def confirm_published(record: RolloutRecord, device_id: str, version: int, now: float,
                      revert: bool = False) -> RolloutRecord:
    """The broker has the (rollback) assignment: record its version."""
    progress = record.devices[device_id]
    if revert:
        if progress.state != DeviceState.REVERTING:
            return record
        return record.with_devices({device_id: replace(progress, state=DeviceState.REVERTED,
                                                       revert_version=version, updated_at=now)})
    if progress.state != DeviceState.ASSIGNING:
        return record
    return record.with_devices({device_id: replace(progress, state=DeviceState.ASSIGNED,
                                                   assignment_version=version, updated_at=now)})


def health(record: RolloutRecord, wave: int, fleet: Mapping[str, DeviceInfo]) -> WaveHealth:
    states = {d: p.state for d, p in record.wave_devices(wave).items()}
    online = {d: fleet[d].online if d in fleet else False for d in states}
    return wave_health(states, online, record.spec.policy, record.accepted_failures.get(wave, 0))


# -- internals ------------------------------------------------------------------------------------


def _trigger(record: RolloutRecord, fleet: Mapping[str, DeviceInfo], now: float) -> str | None:
    if record.state == S.PENDING:
        return "start"
    policy = record.spec.policy
    if policy.auto_halt and any(health(record, w, fleet).breached for w in range(record.wave + 1)):
        return "breached_rollback" if policy.auto_rollback else "breached"
    if record.state == S.RUNNING and health(record, record.wave, fleet).settled:
        return "settled"
    if record.state == S.SOAKING:
        soak_s = record.spec.waves[record.wave].soak_s
        empty = not record.wave_devices(record.wave)
        if empty or (record.soak_started_at is not None and now - record.soak_started_at >= soak_s):
            return "soaked_last" if record.wave == len(record.spec.waves) - 1 else "soaked"
    return None


def _fire(record: RolloutRecord, trigger: str, now: float, actor: str, reason: str | None = None) -> RolloutRecord:
    target = TRANSITIONS[(record.state, trigger)]
    before = record.state
    if target == RESUME_PREVIOUS:
        assert record.paused_state is not None
        target = record.paused_state
        shift = now - (record.paused_at or now)
        soak = None if record.soak_started_at is None else record.soak_started_at + shift
        record = replace(record, paused_state=None, paused_at=None, soak_started_at=soak)
    assert isinstance(target, RolloutState)
    wave = record.wave
    if trigger == "pause":
        record = replace(record, paused_state=record.state, paused_at=now)
    elif trigger in ("breached", "breached_rollback"):
        reason = reason or _breach_reason(record)
        if trigger == "breached_rollback":
            record = _revert(record, {d for d, p in record.devices.items() if p.wave == _breached_wave(record)}, now)
    elif trigger == "rollback":
        record = _revert(record, set(record.devices), now)
    elif before == S.HALTED and trigger == "resume":
        # The operator looked at the failures and chose to go on: they no longer count.
        accepted = {w: _failures(record, w) - record.spec.policy.allowed_failures(len(record.wave_devices(w)))
                    for w in range(record.wave + 1)}
        merged = {w: max(record.accepted_failures.get(w, 0), n) for w, n in accepted.items() if n > 0}
        record = replace(record, accepted_failures={**record.accepted_failures, **merged})
    elif trigger == "start":
        record = _start_wave(record, 0, now)
    elif trigger == "settled":
        record = replace(record, soak_started_at=now)
    elif trigger == "soaked":
        wave = record.wave + 1
        record = _start_wave(record, wave, now)
    entry = Transition(now, before, target, wave, trigger, actor, reason)
    return replace(record, state=target, reason=reason if reason else record.reason,
                   history=(*record.history, entry))


def _start_wave(record: RolloutRecord, wave: int, now: float) -> RolloutRecord:
    changes = {d: replace(p, state=DeviceState.ASSIGNING, waiting_since=now, updated_at=now)
               for d, p in record.wave_devices(wave).items() if p.state == DeviceState.PLANNED}
    return replace(record.with_devices(changes), wave=wave, wave_started_at=now, soak_started_at=None)


def _revert(record: RolloutRecord, device_ids: set[str], now: float) -> RolloutRecord:
    fallback = record.spec.rollback_release
    changes: dict[str, DeviceProgress] = {}
    for device_id in device_ids:
        progress = record.devices[device_id]
        if progress.state in (DeviceState.PLANNED, DeviceState.REVERTING, DeviceState.REVERTED):
            continue
        target = progress.previous_release or fallback
        if target is None:
            changes[device_id] = replace(progress, reason="no previous release to roll back to", updated_at=now)
        else:
            changes[device_id] = replace(progress, state=DeviceState.REVERTING, previous_release=target,
                                         updated_at=now)
    return record.with_devices(changes)


def _admit_joiners(record: RolloutRecord, fleet: Mapping[str, DeviceInfo], now: float) -> RolloutRecord:
    """Devices that entered the targeted group while the rollout runs join its last wave."""
    if record.state.terminal:
        return record
    last = len(record.spec.waves) - 1
    live = record.state in (S.RUNNING, S.SOAKING) and record.wave == last
    joiners = {
        d: DeviceProgress(wave=last, state=DeviceState.ASSIGNING if live else DeviceState.PLANNED,
                          waiting_since=now if live else None, updated_at=now,
                          previous_release=info.active_release)
        for d, info in fleet.items() if d not in record.devices
    }
    return record.with_devices(joiners)


def _refresh_timers(record: RolloutRecord, fleet: Mapping[str, DeviceInfo], now: float) -> RolloutRecord:
    """Time out online devices that never finished; an offline device's clock does not run."""
    timeout_s = record.spec.policy.device_timeout_s
    changes: dict[str, DeviceProgress] = {}
    for device_id, progress in record.devices.items():
        if progress.state not in (DeviceState.ASSIGNED, DeviceState.INSTALLING):
            continue
        info = fleet.get(device_id)
        if info is None or not info.online:
            if progress.waiting_since is None or now - progress.waiting_since > 1.0:
                changes[device_id] = replace(progress, waiting_since=now)
        elif progress.waiting_since is not None and now - progress.waiting_since > timeout_s:
            changes[device_id] = replace(progress, state=DeviceState.TIMED_OUT, updated_at=now,
                                         reason=f"no outcome within {timeout_s:g} s")
    return record.with_devices(changes)


def _failures(record: RolloutRecord, wave: int) -> int:
    return sum(1 for p in record.wave_devices(wave).values() if p.state.failure)


def _breached_wave(record: RolloutRecord) -> int:
    for wave in range(record.wave + 1):
        if health(record, wave, {}).breached:
            return wave
    return record.wave


def _breach_reason(record: RolloutRecord) -> str:
    wave = _breached_wave(record)
    h = health(record, wave, {})
    reasons = sorted({(p.reason or p.state.value).split(":")[0]
                      for p in record.wave_devices(wave).values() if p.state.failure})
    return (f"wave {wave + 1}: {h.failures} of {h.size} devices failed (allowed {h.allowed_failures}): "
            f"{', '.join(reasons)}")
