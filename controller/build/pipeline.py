"""The variant build: one checked ONNX model + golden set in, signed-ready variants out.

    check_release(model, golden)          fast; run it in the request so bad input gets a 4xx at once
        │   InvalidModel / InvalidGoldenSet
        ▼
    build_variants(...)                   slow; run it in a background worker with a progress callback
        ├── onnxruntime-fp32.onnx         basic graph optimizations            ─┐
        ├── onnxruntime-int8.onnx         static QDQ (conv) / dynamic (MatMul)  │ each evaluated on the
        ├── openvino-fp32.tar             IR package                            │ golden set here
        ├── openvino-fp16.tar             IR package, fp16-compressed weights  ─┘
        └── tensorrt-fp16.onnx            ONNX + trt_* settings, engine built on the device
        + golden.npz                      normalised golden set (reference outputs always present)

Every artifact is written to the store under `releases/<model>/<version>/` and described by a
`BuiltVariant` whose `custom` is exactly what the image repository should sign for the target
`models/<model>/<version>/<file>`. A variant that fails to build is recorded as `failed` (with the
error) and the others carry on; one whose accuracy (or, without labels, top-1 agreement) is under the
release's floor, or whose outputs hold NaN/Inf, is kept as a `rejected` record and not offered.
Measured figures are recorded as measured, however bad.

If the build itself dies (not one variant), everything it wrote is deleted before the error propagates.
Publishing (signing targets) and the database are the caller's: this module never touches either.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from controller.artifacts.store import ArtifactStore
from controller.build import onnxruntime_variants as ortv
from controller.build.errors import BuildError, InvalidGoldenSet, InvalidModel, VariantBuildError
from controller.build.evaluate import Evaluation, evaluate, onnxruntime_runner, run_batched, top1
from controller.build.golden import GoldenSet, fit_to_model, parse_golden
from controller.build.model_check import ModelInfo, describe_model, load_model, min_onnxruntime_for
from controller.build.openvino_ir import convert_ir, openvino_runner, openvino_version
from controller.build.tensorrt_variant import TensorRTSettings, tensorrt_custom

log = logging.getLogger(__name__)

ALL_VARIANTS = ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-fp16", "tensorrt-fp16")
_FILES = {"onnxruntime-fp32": ".onnx", "onnxruntime-int8": ".onnx", "openvino-fp32": ".tar",
          "openvino-fp16": ".tar", "tensorrt-fp16": ".onnx"}
GOLDEN_FILE = "golden.npz"


@dataclass(frozen=True)
class BuildLimits:
    max_model_bytes: int = 512 * 1024 * 1024
    max_golden_bytes: int = 256 * 1024 * 1024
    max_golden_uncompressed_bytes: int = 1024 * 1024 * 1024
    max_golden_samples: int = 10_000


@dataclass(frozen=True)
class BuildOptions:
    accuracy_floor: float | None = None
    int8_method: str = "auto"  # auto | static | dynamic
    max_calibration_samples: int = 128
    latency_runs: int = 30
    latency_threads: int = 1
    variants: tuple[str, ...] = ALL_VARIANTS
    tensorrt: TensorRTSettings = field(default_factory=TensorRTSettings)
    limits: BuildLimits = field(default_factory=BuildLimits)


@dataclass(frozen=True)
class BuildProgress:
    step: str
    completed: int
    total: int
    message: str

    @property
    def fraction(self) -> float:
        return self.completed / self.total if self.total else 1.0


ProgressFn = Callable[[BuildProgress], None]


@dataclass(frozen=True)
class CheckedRelease:
    """A model and golden set that passed every check; `golden.reference_outputs` is always set."""

    model_bytes: bytes
    info: ModelInfo
    golden: GoldenSet
    baseline_outputs: np.ndarray


@dataclass(frozen=True)
class BuiltVariant:
    variant_id: str
    runtime: str
    precision: str
    target_name: str  # models/<model>/<version>/<file>
    key: str | None  # where the bytes are in the store; None when the build failed
    status: str  # ready | rejected | unverified | failed
    offered: bool
    length: int
    sha256: str
    evaluation: Evaluation | None
    build_s: float
    custom: Mapping[str, Any]
    reason: str | None = None  # why rejected / failed

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready record for the registry (NaN figures become null)."""
        figures = None
        if self.evaluation is not None:
            figures = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in vars(self.evaluation).items()}
        return {"variant_id": self.variant_id, "runtime": self.runtime, "precision": self.precision,
                "target_name": self.target_name, "key": self.key, "status": self.status,
                "offered": self.offered, "length": self.length, "sha256": self.sha256,
                "evaluation": figures, "build_s": round(self.build_s, 3), "custom": dict(self.custom),
                "reason": self.reason}


@dataclass(frozen=True)
class BuildReport:
    model: str
    version: str
    info: ModelInfo
    baseline: Evaluation  # the uploaded model itself, under ONNX Runtime
    golden_target_name: str
    golden_key: str
    golden_length: int
    golden_sha256: str
    golden_custom: Mapping[str, Any]
    variants: tuple[BuiltVariant, ...]

    def offered(self) -> tuple[BuiltVariant, ...]:
        return tuple(v for v in self.variants if v.offered)

    def variant(self, variant_id: str) -> BuiltVariant:
        for v in self.variants:
            if v.variant_id == variant_id:
                return v
        raise KeyError(variant_id)


def check_release(model_bytes: bytes, golden_bytes: bytes, *, limits: BuildLimits | None = None,
                  probe_samples: int | None = None) -> CheckedRelease:
    """Check the model and the golden set against each other; raise InvalidModel / InvalidGoldenSet.

    `probe_samples` runs the model on only the first N golden inputs: for the upload request, where a
    large golden set on a large model would hold the request for long. The result then covers only
    those samples; the build checks again on all of them.
    """
    limits = limits or BuildLimits()
    model = load_model(model_bytes, max_model_bytes=limits.max_model_bytes)
    info = describe_model(model)
    golden = fit_to_model(parse_golden(golden_bytes, max_bytes=limits.max_golden_bytes,
                                       max_uncompressed_bytes=limits.max_golden_uncompressed_bytes,
                                       max_samples=limits.max_golden_samples), info)
    if probe_samples is not None:
        golden = GoldenSet(golden.inputs[:probe_samples],
                           None if golden.labels is None else golden.labels[:probe_samples],
                           None if golden.reference_outputs is None else golden.reference_outputs[:probe_samples])
    try:
        runner = onnxruntime_runner(model_bytes, threads=1)
        outputs = run_batched(runner, golden.inputs, batch_size=64, static_batch=_static_batch(info))
    except Exception as e:  # onnxruntime's own exception types (Fail, InvalidArgument, ...)
        raise InvalidModel("does_not_load", f"ONNX Runtime cannot run the model on the golden inputs: "
                                            f"{str(e).splitlines()[0][:300]}") from e
    if not np.all(np.isfinite(outputs)):
        raise InvalidGoldenSet("non_finite", "the model produces NaN or Inf on the golden inputs")
    reference = golden.reference_outputs
    if reference is not None:
        if reference.shape != outputs.shape:
            raise InvalidGoldenSet("shape_mismatch", f"golden reference_outputs have shape {reference.shape}; "
                                                     f"the model outputs {outputs.shape}")
        ours, theirs = top1(outputs), top1(reference)
        close = np.allclose(outputs, reference, rtol=1e-3, atol=1e-4)
        agree = ours is not None and theirs is not None and float(np.mean(ours == theirs)) >= 0.99
        if not (close or agree):
            raise InvalidGoldenSet("reference_mismatch", "the uploaded model does not reproduce the golden "
                                                         "reference_outputs (is it the right model?)")
    else:
        golden = golden.with_reference(outputs.astype(np.float32))
    return CheckedRelease(model_bytes, info, golden, outputs)


def _static_batch(info: ModelInfo) -> int | None:
    first = info.input.shape[0] if info.input.shape else None
    return first if isinstance(first, int) and first > 0 else None


def _portable_onnx(model_bytes: bytes) -> tuple[bytes, dict[str, str]]:
    """The variant stamped with the lowest IR version its opsets allow, and its `runtime_version`.

    Exporters and `onnx.helper` stamp the newest IR version they know; a runtime older than that IR
    refuses the file at load ("Unsupported model IR version") even when it implements every operator.
    Lowering the stamp is kept only when `onnx.checker` accepts the model at that IR version (new data
    types need new IR). `runtime_version` is then the oldest ONNX Runtime for the opset (quantization may
    raise it); when the stamp cannot be lowered, or the opset is newer than the table, it is this build
    host's own release, the only one known to load it.
    """
    model = onnx.load_model_from_string(model_bytes)
    lowest = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    lowered = model.ir_version <= lowest
    if not lowered:
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)
        candidate.ir_version = lowest
        try:
            onnx.checker.check_model(candidate)
        except onnx.checker.ValidationError:
            log.info("variant keeps IR version %d: the checker refuses it at %d", model.ir_version, lowest)
        else:
            model_bytes, lowered = candidate.SerializeToString(), True
    opset = max((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), default=0)
    version = min_onnxruntime_for(opset) if lowered else None
    if version is None:
        import onnxruntime

        version = ".".join(onnxruntime.__version__.split(".")[:2])
    return model_bytes, {"runtime_version": version}


def _decimal(value: float | None) -> str | None:
    return None if value is None or not math.isfinite(value) else f"{value:.6f}"


def _micros(value_ms: float) -> int | None:
    return round(value_ms * 1000.0) if math.isfinite(value_ms) else None


class _Builder:
    def __init__(self, release: CheckedRelease, store: ArtifactStore, progress: ProgressFn, *, model: str,
                 version: str, release_counter: int, options: BuildOptions, key_prefix: str, workdir: Path):
        self.release, self.store, self.progress = release, store, progress
        self.model, self.version, self.counter = model, version, release_counter
        self.options, self.prefix, self.workdir = options, key_prefix, workdir
        self.written: list[str] = []
        self.source = workdir / "source.onnx"
        self.source.write_bytes(release.model_bytes)

    def write(self, name: str, data: bytes) -> str:
        key = self.prefix + name
        self.store.write_bytes(key, data)
        self.written.append(key)
        return key

    def base_custom(self, kind: str) -> dict[str, Any]:
        return {"kind": kind, "model": self.model, "version": self.version, "release_counter": self.counter}

    def evaluate(self, runner_factory: Callable[[], Any]) -> Evaluation:
        try:
            runner = runner_factory()
            return evaluate(runner, self.release.golden, static_batch=_static_batch(self.release.info),
                            latency_runs=self.options.latency_runs, latency_threads=self.options.latency_threads)
        except VariantBuildError:
            raise
        except Exception as e:
            raise VariantBuildError("evaluation_failed", f"variant does not run on the golden set: "
                                                         f"{str(e).splitlines()[0][:300]}") from e

    def artifact(self, variant_id: str) -> tuple[bytes, dict[str, Any], Evaluation | None]:
        info, threads = self.release.info, self.options.latency_threads
        onnx_fields = {"format": "onnx", "arch": "any", "accelerator": "cpu"}
        if variant_id == "onnxruntime-fp32":
            data, requirement = _portable_onnx(ortv.optimize_fp32(self.release.model_bytes, self.workdir))
            fields: dict[str, Any] = {**onnx_fields, **requirement, "graph_optimization": "basic"}
            return data, fields, self.evaluate(lambda: onnxruntime_runner(data, threads=threads))
        if variant_id == "onnxruntime-int8":
            method = ortv.choose_int8_method(self.options.int8_method, has_conv=info.has_conv)
            calibration = ortv.calibration_inputs(self.release.golden.inputs,
                                                  max_samples=self.options.max_calibration_samples)
            data, details = ortv.quantize_int8(self.release.model_bytes, self.workdir, method=method,
                                               input_name=info.input.name, calibration=calibration,
                                               dynamic_batch=info.input.batch_dynamic)
            data, requirement = _portable_onnx(data)
            return data, {**onnx_fields, **requirement, **details}, self.evaluate(lambda: onnxruntime_runner(data, threads=threads))
        if variant_id in ("openvino-fp32", "openvino-fp16"):
            data = convert_ir(self.source, compress_to_fp16=variant_id.endswith("fp16"))
            fields = {"format": "openvino-ir-tar", "arch": "any", "accelerator": "cpu"}
            if (ov_version := openvino_version()) is not None:
                fields["runtime_version"] = ov_version
            return data, fields, self.evaluate(lambda: openvino_runner(data, threads=threads))
        if variant_id == "tensorrt-fp16":
            fields = {"format": "onnx", "arch": "any", "accelerator": "cuda",
                      **tensorrt_custom(info, self.options.tensorrt)}
            return self.release.model_bytes, fields, None
        raise ValueError(f"unknown variant {variant_id!r}; expected one of {ALL_VARIANTS}")

    def judge(self, evaluation: Evaluation | None) -> tuple[str, str | None]:
        if evaluation is None:
            return "unverified", None
        if evaluation.nonfinite_outputs:
            return "rejected", f"{evaluation.nonfinite_outputs} NaN/Inf outputs on the golden set"
        floor = self.options.accuracy_floor
        measure, label = evaluation.accuracy, "accuracy"
        if measure is None:
            measure, label = evaluation.top1_agreement, "top-1 agreement"
        if floor is not None and measure is not None and measure < floor:
            return "rejected", f"{label} {measure:.4f} is below the release floor {floor:.4f}"
        return "ready", None

    def build(self, variant_id: str) -> BuiltVariant:
        runtime, precision = variant_id.split("-", 1)
        name = variant_id + _FILES[variant_id]
        target = f"models/{self.model}/{self.version}/{name}"
        started = time.perf_counter()
        try:
            data, fields, evaluation = self.artifact(variant_id)
        except VariantBuildError as e:
            return BuiltVariant(variant_id, runtime, precision, target, None, "failed", False, 0, "", None,
                                time.perf_counter() - started, {}, reason=str(e))
        except Exception as e:  # a converter bug must not cost the release its other variants
            log.exception("variant %s of %s/%s failed unexpectedly", variant_id, self.model, self.version)
            return BuiltVariant(variant_id, runtime, precision, target, None, "failed", False, 0, "", None,
                                time.perf_counter() - started, {},
                                reason=f"internal_error: {type(e).__name__}: {str(e)[:300]}")
        status, reason = self.judge(evaluation)
        custom = {**self.base_custom("variant"), "runtime": runtime, "precision": precision, **fields,
                  "evaluated": evaluation is not None}
        if evaluation is not None:
            # Signed metadata is canonical JSON, which has no floats: ratios travel as 6-decimal strings,
            # latencies as integer microseconds.
            measured = {"accuracy": _decimal(evaluation.accuracy),
                        "top1_agreement": _decimal(evaluation.top1_agreement),
                        "max_abs_error": _decimal(evaluation.max_abs_error),
                        "build_latency_p50_us": _micros(evaluation.latency_p50_ms),
                        "build_latency_p95_us": _micros(evaluation.latency_p95_ms)}
            custom.update({k: v for k, v in measured.items() if v is not None})
        key = self.write(name, data)
        return BuiltVariant(variant_id, runtime, precision, target, key, status, status in ("ready", "unverified"),
                            len(data), hashlib.sha256(data).hexdigest(), evaluation,
                            time.perf_counter() - started, custom, reason)


def build_variants(model_bytes: bytes | CheckedRelease, golden_bytes: bytes | None, store: ArtifactStore,
                   progress: ProgressFn | None = None, *, model: str, version: str, release_counter: int = 0,
                   options: BuildOptions | None = None, key_prefix: str | None = None) -> BuildReport:
    """Build, evaluate and store every variant of one release; see the module docstring.

    Pass a `CheckedRelease` (from `check_release`) to skip checking twice, with `golden_bytes=None`.
    Raises InvalidModel / InvalidGoldenSet for bad input, StoreUnavailable / ArtifactError if the store
    fails (after deleting what this call wrote).
    """
    options = options or BuildOptions()
    notify = progress or (lambda _: None)
    unknown = set(options.variants) - set(ALL_VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; expected some of {ALL_VARIANTS}")
    total = len(options.variants) + 2
    notify(BuildProgress("check", 0, total, "checking model and golden set"))
    if isinstance(model_bytes, CheckedRelease):
        release = model_bytes
    else:
        if golden_bytes is None:
            raise InvalidGoldenSet("missing_array", "no golden set given")
        release = check_release(model_bytes, golden_bytes, limits=options.limits)
    prefix = key_prefix if key_prefix is not None else f"releases/{model}/{version}/"
    with tempfile.TemporaryDirectory(prefix="edgefleet-build-") as tmp:
        builder = _Builder(release, store, notify, model=model, version=version, release_counter=release_counter,
                           options=options, key_prefix=prefix, workdir=Path(tmp))
        try:
            notify(BuildProgress("baseline", 1, total, "measuring the uploaded model"))
            baseline = builder.evaluate(lambda: onnxruntime_runner(release.model_bytes,
                                                                   threads=options.latency_threads))
            golden_data = release.golden.to_npz_bytes()
            golden_key = builder.write(GOLDEN_FILE, golden_data)
            golden_custom = {**builder.base_custom("golden"), "samples": len(release.golden),
                             "has_labels": release.golden.labels is not None}
            variants = []
            for index, variant_id in enumerate(options.variants):
                notify(BuildProgress(variant_id, 2 + index, total, f"building {variant_id}"))
                variants.append(builder.build(variant_id))
        except BaseException:
            for key in builder.written:
                store.delete(key)
            raise
    notify(BuildProgress("done", total, total,
                         f"{sum(v.offered for v in variants)} of {len(variants)} variants offered"))
    return BuildReport(model, version, release.info, baseline, f"models/{model}/{version}/{GOLDEN_FILE}",
                       golden_key, len(golden_data), hashlib.sha256(golden_data).hexdigest(), golden_custom,
                       tuple(variants))


__all__ = ["ALL_VARIANTS", "BuildError", "BuildLimits", "BuildOptions", "BuildProgress", "BuildReport",
           "BuiltVariant", "CheckedRelease", "build_variants", "check_release"]
