"""Variant build: how long one release takes to build and what each variant measures on this host.

Builds every variant of the digits CNN (trained here) and of a MobileNetV2-shaped network (seeded
random weights, `--image-size`), through `controller.build.build_variants` into a local artifact store,
and prints each variant's status, size, accuracy / top-1 agreement and batch-1 latency. Ratios are
against the fp32 ONNX Runtime variant of the same model measured in the same run.

Headline keys: `build_s_cnn`, `build_s_mobilenet`, `int8_latency_ratio_mobilenet` (int8 p50 / fp32 p50;
below 1 means int8 is faster), `int8_agreement_mobilenet`, `openvino_fp16_size_ratio_mobilenet`.

    .venv/bin/python bench/build.py [--quick] [--image-size N] [--latency-runs N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.artifacts import LocalArtifactStore  # noqa: E402
from controller.build import BuildOptions, BuildReport, build_variants  # noqa: E402
from controller.sample_models import MODEL_FILE, SampleModel, build_digits_cnn, build_mobilenet_like  # noqa: E402


def run(sample: SampleModel, store: LocalArtifactStore, name: str, latency_runs: int) -> tuple[BuildReport, float]:
    started = time.perf_counter()
    report = build_variants(sample.path.read_bytes(), sample.golden_path.read_bytes(), store, model=name,
                            version="1", options=BuildOptions(latency_runs=latency_runs))
    elapsed_s = time.perf_counter() - started
    print(f"{name}: {elapsed_s:.2f} s for {len(report.variants)} variants "
          f"(baseline p50 {report.baseline.latency_p50_ms:.3f} ms)")
    for v in report.variants:
        e = v.evaluation
        figures = "not measured here (engine built on the device)" if e is None else (
            f"accuracy {e.accuracy if e.accuracy is not None else float('nan'):.4f}  "
            f"agreement {e.top1_agreement if e.top1_agreement is not None else float('nan'):.4f}  "
            f"max|d| {e.max_abs_error:.4f}  p50 {e.latency_p50_ms:.3f} ms  p95 {e.latency_p95_ms:.3f} ms")
        print(f"  {v.variant_id:17s} {v.status:10s} {v.length / 1024:9.1f} KiB  {figures}"
              + (f"  ({v.reason})" if v.reason else ""))
    return report, elapsed_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller MobileNet and fewer latency runs (< 60 s)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--latency-runs", type=int, default=None)
    args = parser.parse_args()
    image_size = args.image_size or (96 if args.quick else 224)
    latency_runs = args.latency_runs or (30 if args.quick else 100)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-build-") as tmp:
        root = Path(tmp)
        store = LocalArtifactStore(root / "store")
        cnn, cnn_s = run(build_digits_cnn(root / "cnn"), store, "digits-cnn", latency_runs)
        mobilenet = build_mobilenet_like(root / "mobilenet" / MODEL_FILE, image_size=image_size)
        net, net_s = run(mobilenet, store, f"mobilenet-{image_size}", latency_runs)
    fp32, int8 = net.variant("onnxruntime-fp32"), net.variant("onnxruntime-int8")
    ov32, ov16 = net.variant("openvino-fp32"), net.variant("openvino-fp16")
    assert fp32.evaluation is not None and int8.evaluation is not None
    figures = {
        "build_s_cnn": round(cnn_s, 3),
        "build_s_mobilenet": round(net_s, 3),
        "mobilenet_image_size": image_size,
        "fp32_p50_ms_mobilenet": round(fp32.evaluation.latency_p50_ms, 3),
        "int8_p50_ms_mobilenet": round(int8.evaluation.latency_p50_ms, 3),
        "int8_latency_ratio_mobilenet": round(int8.evaluation.latency_p50_ms / fp32.evaluation.latency_p50_ms, 3),
        "int8_agreement_mobilenet": int8.evaluation.top1_agreement,
        "openvino_fp16_size_ratio_mobilenet": round(ov16.length / ov32.length, 3),
        "int8_accuracy_cnn": cnn.variant("onnxruntime-int8").evaluation.accuracy,  # type: ignore[union-attr]
        "fp32_accuracy_cnn": cnn.variant("onnxruntime-fp32").evaluation.accuracy,  # type: ignore[union-attr]
    }
    print(f"int8 / fp32 latency on mobilenet-{image_size}: {figures['int8_latency_ratio_mobilenet']}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
