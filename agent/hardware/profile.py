"""The hardware profile: what this device is, as plain data that selection and the gate can reason about.

The profile is a frozen value; `agent.hardware.probe` builds it from a filesystem root (so tests can
point it at a fake Jetson, Raspberry Pi or Intel tree) and from an inventory of installed runtimes.
It is published as JSON so the controller can group devices by `hardware_class`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# CPU features that make int8 kernels faster than fp32 ones. Without them ONNX Runtime and OpenVINO
# emulate int8 dot products with wider instructions and int8 is usually slower (and, for QDQ models
# with u8 activations on plain AVX2, can saturate and lose accuracy).
INT8_CPU_FEATURES = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "dotprod"})


@dataclass(frozen=True)
class RuntimeInventory:
    """Installed inference runtimes (name -> version) and what each can drive."""

    versions: Mapping[str, str] = field(default_factory=dict)
    onnxruntime_providers: tuple[str, ...] = ()
    openvino_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class HardwareProfile:
    arch: str
    cpu_model: str
    cpu_flags: frozenset[str]
    cores: int
    memory_mb: int
    board_model: str | None = None
    jetson_l4t: str | None = None
    raspberry_pi: str | None = None
    nvidia_gpu: str | None = None
    gpu_compute_capability: str | None = None
    cuda_version: str | None = None
    tensorrt_version: str | None = None
    runtimes: RuntimeInventory = field(default_factory=RuntimeInventory)

    @property
    def is_jetson(self) -> bool:
        return self.jetson_l4t is not None

    @property
    def has_nvidia_gpu(self) -> bool:
        return self.nvidia_gpu is not None

    @property
    def int8_cpu_features(self) -> frozenset[str]:
        return self.cpu_flags & INT8_CPU_FEATURES

    @property
    def hardware_class(self) -> str:
        """A short, stable label for grouping devices with comparable performance."""
        if self.is_jetson:
            return "jetson-" + _slug(self.board_model or "unknown").replace("nvidia-jetson-", "")
        if self.raspberry_pi is not None:
            return "rpi-" + _slug(self.raspberry_pi).replace("raspberry-pi-", "")
        if self.nvidia_gpu is not None:
            return f"{self.arch}-nvidia"
        if self.arch == "x86_64":
            if "amx_int8" in self.cpu_flags:
                return "x86_64-amx"
            if "avx512_vnni" in self.cpu_flags or "avx_vnni" in self.cpu_flags:
                return "x86_64-vnni"
            if "avx2" in self.cpu_flags:
                return "x86_64-avx2"
        return self.arch

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "cpu_model": self.cpu_model,
            "cpu_flags": sorted(self.cpu_flags),
            "cores": self.cores,
            "memory_mb": self.memory_mb,
            "board_model": self.board_model,
            "jetson_l4t": self.jetson_l4t,
            "raspberry_pi": self.raspberry_pi,
            "nvidia_gpu": self.nvidia_gpu,
            "gpu_compute_capability": self.gpu_compute_capability,
            "cuda_version": self.cuda_version,
            "tensorrt_version": self.tensorrt_version,
            "runtimes": dict(self.runtimes.versions),
            "onnxruntime_providers": list(self.runtimes.onnxruntime_providers),
            "openvino_devices": list(self.runtimes.openvino_devices),
            "hardware_class": self.hardware_class,
            "int8_cpu_features": sorted(self.int8_cpu_features),
        }


def _slug(text: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")
