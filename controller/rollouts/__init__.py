"""Staged rollouts of a model release across a fleet, halted and rolled back on ML signals.

```
 POST /rollouts ─▶ plan.partition ─▶ RolloutRecord (PENDING, devices planned into waves) ─▶ store
 engine.step():  events ─▶ machine.apply_event ─┐
                 fleet  ─▶ machine.tick ────────┴▶ store.save ─▶ Assigner.assign (signed, retained)
```

`plan` (what a rollout is), `device_policies` (its overrides of the signed device policies), `signals`
(device outcomes, wave verdicts), `records` + `machine` (the persisted state machine), `codec` (JSON),
`store` (persistence port), `engine` (the driver).
Errors: see `controller.rollouts.errors`.
"""

from __future__ import annotations

from controller.rollouts.engine import Assigner, FleetView, RolloutEngine
from controller.rollouts.errors import InvalidCommand, PlanError, RolloutError, RolloutNotFound, StaleRecord
from controller.rollouts.plan import DeviceInfo, HealthPolicy, RolloutSpec, Selector, WaveSpec
from controller.rollouts.records import DeviceProgress, RolloutRecord, RolloutState
from controller.rollouts.signals import DeviceState
from controller.rollouts.store import FileRolloutStore, RolloutStore

__all__ = [
    "Assigner", "DeviceInfo", "DeviceProgress", "DeviceState", "FileRolloutStore", "FleetView", "HealthPolicy",
    "InvalidCommand", "PlanError", "RolloutEngine", "RolloutError", "RolloutNotFound", "RolloutRecord",
    "RolloutSpec", "RolloutState", "RolloutStore", "Selector", "StaleRecord", "WaveSpec",
]
