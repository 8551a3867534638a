"""Text forms the driver keeps in its journal: the verified plan and model pointer records.

The plan is stored as the driver received it, already verified; it is re-read only from the device's
own journal, so decoding re-checks the assignment's structure but not signatures.
"""

from __future__ import annotations

import dataclasses
import json

from agent.slots import ModelRef
from manifests import assignment as assignment_doc
from manifests.verify import SignedTarget, VerifiedPlan


def plan_to_json(plan: VerifiedPlan) -> str:
    return json.dumps({"assignment": assignment_doc.to_dict(plan.assignment),
                       "targets": [{"name": t.name, "length": t.length, "sha256": t.sha256, "custom": dict(t.custom)}
                                   for t in plan.targets]}, sort_keys=True)


def plan_from_json(text: str) -> VerifiedPlan:
    doc = json.loads(text)
    targets = tuple(SignedTarget(str(t["name"]), int(t["length"]), str(t["sha256"]), dict(t["custom"]))
                    for t in doc["targets"])
    return VerifiedPlan(assignment_doc.from_dict(doc["assignment"]), targets)


def ref_to_json(ref: ModelRef | None) -> str:
    return json.dumps(dataclasses.asdict(ref) if ref is not None else None, sort_keys=True)


def ref_from_json(text: str | None) -> ModelRef | None:
    doc = json.loads(text) if text else None
    return ModelRef(**doc) if doc else None
