"""Variant selection: which signed variants of the assigned release this device should try, in order.

A pure function of (hardware profile, signed variants, gate policy). Every variant ends up either in
`candidates` (ranked, best first) or in `rejected` with a reason a person can act on
("tensorrt: no NVIDIA GPU"). The gate has the last word: the engine tries the candidates in order and
falls back to the next one when the gate refuses a variant.

Ranking prefers accelerators over CPU, then runtimes that usually run faster on the given hardware,
then lower precision only where the hardware has int8/fp16 instructions. The ranking is a guess made
before measuring; it only orders the gate's work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.hardware.profile import HardwareProfile
from manifests.assignment import GatePolicy
from manifests.verify import SignedTarget

KNOWN_RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
KNOWN_PRECISIONS = ("fp32", "fp16", "int8")
_OPENVINO_ACCELERATORS = {"gpu": "GPU", "npu": "NPU"}


@dataclass(frozen=True)
class Candidate:
    target: SignedTarget
    score: int
    runtime: str
    precision: str
    device: str  # what RuntimeOptions.device should be: "cpu", "GPU", "NPU", "cuda:0"


@dataclass(frozen=True)
class Rejection:
    target: str
    reason: str


@dataclass(frozen=True)
class Selection:
    candidates: tuple[Candidate, ...]
    rejected: tuple[Rejection, ...]

    def reasons(self) -> dict[str, str]:
        return {r.target: r.reason for r in self.rejected}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _str(custom: Mapping[str, Any], key: str, default: str) -> str:
    value = custom.get(key, default)
    return value.lower() if isinstance(value, str) and value else default


def _judge(profile: HardwareProfile, target: SignedTarget, policy: GatePolicy) -> Candidate | str:
    """A candidate, or the reason the variant cannot or should not run here."""
    custom = target.custom
    runtime = _str(custom, "runtime", "")
    precision = _str(custom, "precision", "fp32")
    arch = _str(custom, "arch", "any")
    accelerator = _str(custom, "accelerator", "cpu")
    if runtime not in KNOWN_RUNTIMES:
        return f"runtime {runtime or '(none)'!r} is unknown to this agent"
    if precision not in KNOWN_PRECISIONS:
        return f"precision {precision!r} is unknown to this agent"
    if arch not in ("any", "", profile.arch):
        return f"{runtime}: built for {arch}, device is {profile.arch}"
    installed = profile.runtimes.versions.get(runtime)
    if runtime == "tensorrt":
        if not profile.has_nvidia_gpu:
            return "tensorrt: no NVIDIA GPU"
        installed = installed or profile.tensorrt_version
    if installed is None:
        return f"{runtime}: not installed on this device"
    wanted = custom.get("runtime_version")
    if isinstance(wanted, str) and wanted:
        have, need = _version_tuple(installed), _version_tuple(wanted)
        # ONNX files need a runtime at least as new as their opset; OpenVINO reads IR from its
        # converter's release line and newer. (TensorRT engines are built on the device itself.)
        if runtime != "tensorrt" and have[:2] < need[:2]:
            return f"{runtime}: variant needs {wanted} or newer, device has {installed}"
    device = "cpu"
    score = 10
    if runtime == "tensorrt":
        device, score = "cuda:0", 100
    elif runtime == "openvino":
        if accelerator in _OPENVINO_ACCELERATORS:
            ov_device = _OPENVINO_ACCELERATORS[accelerator]
            if not any(d.upper().startswith(ov_device) for d in profile.runtimes.openvino_devices):
                return f"openvino: no {ov_device} device (have {', '.join(profile.runtimes.openvino_devices) or 'none'})"
            device, score = ov_device, 80
        else:
            device, score = "CPU", 30 if profile.arch == "x86_64" else 5
    elif runtime == "onnxruntime":
        if accelerator in ("cuda", "gpu"):
            if "CUDAExecutionProvider" not in profile.runtimes.onnxruntime_providers:
                return "onnxruntime: no CUDA execution provider"
            device, score = "cuda:0", 60
        else:
            score = 20
    if precision == "int8":
        if not policy.allow_int8:
            return "int8: disallowed by the assignment's gate policy"
        if (device == "cpu" or device == "CPU") and not profile.int8_cpu_features:
            return "int8: no VNNI/AMX/dotprod, expected slower"
        score += 5
    elif precision == "fp16":
        if device in ("cpu", "CPU") and runtime == "onnxruntime" and not ({"fp16", "avx512_fp16"} & profile.cpu_flags):
            return "fp16: no fp16 arithmetic on this CPU, expected slower"
        score += 2
    return Candidate(target=target, score=score, runtime=runtime, precision=precision, device=device)


def select(profile: HardwareProfile, variants: Iterable[SignedTarget], policy: GatePolicy) -> Selection:
    """Rank the variants this device can run; give every other one its reason."""
    candidates: list[Candidate] = []
    rejected: list[Rejection] = []
    for target in variants:
        if target.kind != "variant":
            continue
        verdict = _judge(profile, target, policy)
        if isinstance(verdict, Candidate):
            candidates.append(verdict)
        else:
            rejected.append(Rejection(target=target.name, reason=verdict))
    candidates.sort(key=lambda c: (-c.score, c.target.name))
    return Selection(candidates=tuple(candidates), rejected=tuple(rejected))
