"""The benchmark and accuracy gate: measure a candidate in a child process, judge it purely.

    ProcessGate.evaluate(GateInput, GatePolicy)
        └─ child: load → golden set (finite? accuracy, agreement) → peak RSS
                  → current model on the same set → latency A,B,B,A,… → report file
        └─ judge(report, policy, settings) -> Verdict(passed, reasons)

The gate raises nothing for a bad model: every problem is a reason in the verdict. A crash or a
timeout of the child is reported as `crashed: ...` / `timeout: ...`.
"""

from __future__ import annotations

from agent.gate.report import GateReport, GateSettings, ModelFigures, Verdict, judge, regression_ratio
from agent.gate.runner import Gate, GateInput, GateOutcome, ProcessGate

__all__ = [
    "Gate",
    "GateInput",
    "GateOutcome",
    "GateReport",
    "GateSettings",
    "ModelFigures",
    "ProcessGate",
    "Verdict",
    "judge",
    "regression_ratio",
]
