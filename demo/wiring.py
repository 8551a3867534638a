"""The controller app's rollout engine, with the demo's assignment policies.

The app runs its own rollout engine when it has an MQTT bridge and a director key
(`controller.rollouts.service.attach_to_app`): fleet from the registry, director-signed assignments
published through the bridge, device events fed back. The demo uses that engine unchanged and only
replaces the policies its assignments carry (`AssignmentPolicies`: gate, probation, capture), so a
demo on a busy two-core machine gets a short probation window and lenient latency budgets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.rollouts import RolloutEngine
from controller.rollouts.assigner import AssignmentPolicies


def app_rollouts(ctx: Any, policies: Mapping[str, Any] | None = None) -> RolloutEngine:
    """The app's engine; its assigner signs every assignment with `policies` from now on."""
    engine = ctx.extras.get("rollout_engine")
    if engine is None:
        raise RuntimeError("the controller runs no rollout engine (it needs the MQTT bridge and a director key)")
    if policies:
        fixed = AssignmentPolicies(**dict(policies))
        ctx.extras["assigner"].policies_for = lambda release, rollout_id: fixed
    return engine  # type: ignore[no-any-return]
