"""A small real Activator and Probation for engine tests that run real models without the HTTP server:
sessions come from `agent.runtime.loader_for`, probation runs the golden inputs through the served
session and fails on errors or non-finite outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.engine import ActiveModel, ProbationResult
from agent.runtime import RuntimeOptions, Session, loader_for
from manifests.assignment import ProbationPolicy


@dataclass
class SessionActivator:
    serving: Session | None = None
    serving_ref: ActiveModel | None = None
    kept: tuple[ActiveModel, Session] | None = None
    log: list[str] = field(default_factory=list)

    def _load(self, model: ActiveModel) -> Session:
        return loader_for(model.ref.runtime).load(model.path, RuntimeOptions(intra_op_threads=1))

    def activate(self, model: ActiveModel) -> None:
        session = self._load(model)
        if self.serving is not None and self.serving_ref is not None:
            self.kept = (self.serving_ref, self.serving)
        self.serving, self.serving_ref = session, model
        self.log.append(f"activate {model.ref.target}")

    def rollback(self, model: ActiveModel | None) -> None:
        if model is None:
            self.serving, self.serving_ref = None, None
        elif self.kept is not None and self.kept[0].ref.sha256 == model.ref.sha256:
            self.serving_ref, self.serving = self.kept
        else:
            self.serving, self.serving_ref = self._load(model), model
        self.kept = None
        self.log.append(f"rollback {model.ref.target if model else None}")

    def commit(self, model: ActiveModel) -> None:
        self.kept = None
        self.log.append(f"commit {model.ref.target}")


@dataclass
class GoldenProbation:
    """Feeds golden inputs through the served session; any error or NaN/Inf fails probation."""

    activator: SessionActivator
    golden_inputs: np.ndarray

    def watch(self, model: ActiveModel, policy: ProbationPolicy) -> ProbationResult:
        session = self.activator.serving
        if session is None:
            return ProbationResult(False, "nothing is served")
        spec = session.inputs[0]
        errors = 0
        nonfinite = 0
        for i in range(min(len(self.golden_inputs), 32)):
            try:
                out = session.run({spec.name: self.golden_inputs[i:i + 1].astype(spec.dtype)})
            except Exception:
                errors += 1
                continue
            nonfinite += int(sum(int((~np.isfinite(v)).sum()) for v in out.values() if v.dtype.kind == "f"))
        if errors:
            return ProbationResult(False, f"{errors} failed requests")
        if nonfinite > policy.max_nan_rate:
            return ProbationResult(False, f"{nonfinite} non-finite outputs")
        return ProbationResult(True, None, {"requests": min(len(self.golden_inputs), 32)})


def model_bytes(path: Path) -> bytes:
    return path.read_bytes()
