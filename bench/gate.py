"""How long the on-device gate takes, and what it measures, on the digits MLP and a real pretrained
classifier (PaddleOCR's text-direction MobileNetV3 from the rapidocr-onnxruntime wheel).

Each gate run is the full path the agent takes: spawn the child process, load candidate and current
model, golden set, interleaved latency (default GateSettings), report, verdict. Candidates: the fp32
model against itself, and its static int8 (QDQ) variant against fp32. The last line is one JSON
object; headline key `gate_s` (median wall time of the digits fp32 gate).

    .venv/bin/python bench/gate.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.gate import GateInput, GateSettings, ProcessGate  # noqa: E402
from agent.hardware import probe  # noqa: E402
from controller.sample_models import SampleModel, train_digits_mlp  # noqa: E402
from manifests.assignment import GatePolicy  # noqa: E402


def gate_once(gate: ProcessGate, sample: SampleModel, candidate: Path, precision: str,
              hardware_class: str) -> tuple[float, dict[str, object]]:
    g = GateInput(candidate=candidate.name, runtime="onnxruntime", precision=precision, device="cpu",
                  model_path=candidate, golden_path=sample.golden_path, hardware_class=hardware_class,
                  current_path=sample.path, current_runtime="onnxruntime")
    t = time.perf_counter()
    outcome = gate.evaluate(g, GatePolicy())
    elapsed = time.perf_counter() - t
    r = outcome.report
    cur = r.current
    return elapsed, {
        "passed": outcome.verdict.passed, "reasons": list(outcome.verdict.reasons),
        "accuracy": r.measured.accuracy, "agreement": r.measured.agreement,
        "p50_ms": r.measured.latency_p50_ms, "p95_ms": r.measured.latency_p95_ms,
        "current_p50_ms": cur.latency_p50_ms if cur else None,
        "peak_rss_mb": r.measured.peak_rss_mb, "child_s": r.duration_s, "rounds": r.latency_rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per case")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    profile = probe()
    gate = ProcessGate(GateSettings())
    print(f"gate with default settings on {profile.hardware_class} ({profile.cores} cores), {rounds} run(s) per case")
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        folder = Path(tmp)
        samples: dict[str, SampleModel] = {"digits": train_digits_mlp(folder / "digits")}
        try:
            from tests.textdir import TextDirectionUnavailable, build_textdir_classifier

            try:
                samples["textdir"] = build_textdir_classifier(folder / "textdir")
            except TextDirectionUnavailable as e:
                print(f"textdir classifier unavailable ({e}); skipping it")
        except ImportError as e:
            print(f"tests.textdir not importable ({e}); skipping the pretrained classifier")
        from tests.agent.bad_models import static_int8

        for name, sample in samples.items():
            int8 = static_int8(sample.path, folder / f"{name}-int8.onnx", sample.golden.inputs)
            for label, candidate, precision in (("fp32", sample.path, "fp32"), ("int8", int8, "int8")):
                times, last = [], {}
                for _ in range(rounds):
                    elapsed, last = gate_once(gate, sample, candidate, precision, profile.hardware_class)
                    times.append(elapsed)
                median = statistics.median(times)
                print(f"  {name} {label}: gate {median:.2f} s (child {last['child_s']:.2f} s, {last['rounds']} rounds), "
                      f"accuracy {last['accuracy']:.3f}, agreement {last['agreement']:.3f}, p50 {last['p50_ms']:.3f} ms "
                      f"vs current {last['current_p50_ms']:.3f} ms, +{last['peak_rss_mb']:.0f} MB, "
                      f"{'PASS' if last['passed'] else 'FAIL ' + '; '.join(last['reasons'])}")  # type: ignore[arg-type]
                result[f"{name}_{label}_gate_s"] = round(median, 3)
                result[f"{name}_{label}_passed"] = last["passed"]
                result[f"{name}_{label}_p50_ms"] = round(float(last["p50_ms"]), 4)  # type: ignore[arg-type]
                result[f"{name}_{label}_agreement"] = last["agreement"]
    headline = {"gate_s": result["digits_fp32_gate_s"], "hardware_class": profile.hardware_class, **result}
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
