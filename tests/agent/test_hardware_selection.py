"""Hardware probe against fake Jetson Orin / Raspberry Pi 5 / Intel trees and this machine, and
variant selection over the resulting profiles."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.hardware import HardwareProfile, RuntimeInventory, probe
from agent.selection import select
from manifests.assignment import GatePolicy
from manifests.verify import SignedTarget
from tests.agent import trees

ORT_OV = RuntimeInventory({"onnxruntime": "1.32.0", "openvino": "2026.4.1"}, ("CPUExecutionProvider",), ("CPU",))
JETSON_RT = RuntimeInventory({"onnxruntime": "1.20.0", "tensorrt": "10.3.0"},
                             ("CUDAExecutionProvider", "CPUExecutionProvider"), ())
PI_RT = RuntimeInventory({"onnxruntime": "1.20.0"}, ("CPUExecutionProvider",), ())


def test_jetson_orin(tmp_path: Path) -> None:
    p = probe(trees.jetson_orin(tmp_path), JETSON_RT)
    assert p.arch == "aarch64" and p.cores == 12 and p.memory_mb == 64_335_556 // 1024
    assert p.board_model == "NVIDIA Jetson AGX Orin Developer Kit"
    assert p.jetson_l4t == "36.3.0" and p.is_jetson and p.has_nvidia_gpu
    assert p.gpu_compute_capability == "8.7"
    assert p.cuda_version == "12.6.68" and p.tensorrt_version == "10.3.0"
    assert {"neon", "dotprod", "fp16"} <= p.cpu_flags
    assert p.int8_cpu_features == {"dotprod"}
    assert p.hardware_class == "jetson-agx-orin-developer-kit"
    assert p.raspberry_pi is None


def test_raspberry_pi_5(tmp_path: Path) -> None:
    p = probe(trees.raspberry_pi_5(tmp_path), PI_RT)
    assert p.arch == "aarch64" and p.cores == 4
    assert p.raspberry_pi == "Raspberry Pi 5 Model B Rev 1.0"
    assert not p.is_jetson and not p.has_nvidia_gpu and p.tensorrt_version is None
    assert "dotprod" in p.cpu_flags and p.hardware_class == "rpi-5-model-b-rev-1-0"


def test_intel(tmp_path: Path) -> None:
    p = probe(trees.intel_nuc(tmp_path), ORT_OV)
    assert p.arch == "x86_64" and p.cores == 16
    assert p.cpu_model.startswith("12th Gen Intel")
    assert {"avx2", "avx_vnni", "sha_ni"} <= p.cpu_flags and "avx512f" not in p.cpu_flags
    assert p.hardware_class == "x86_64-vnni" and p.board_model is None


def test_empty_tree_is_not_an_error(tmp_path: Path) -> None:
    p = probe(tmp_path)
    assert p.arch == "unknown" and p.memory_mb == 0 and p.runtimes.versions == {}


def test_this_machine_and_the_cli() -> None:
    p = probe()
    assert p.cores >= 1 and p.memory_mb > 0
    assert "onnxruntime" in p.runtimes.versions and "CPUExecutionProvider" in p.runtimes.onnxruntime_providers
    out = subprocess.run([sys.executable, "-m", "agent.cli", "profile"], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    assert doc["arch"] == p.arch and doc["hardware_class"] == p.hardware_class


def _target(variant_id: str, **custom: object) -> SignedTarget:
    c = {"kind": "variant", "model": "m", "version": "1", "release_counter": 1, "runtime": "onnxruntime",
         "precision": "fp32", **custom}
    return SignedTarget(f"models/m/1/{variant_id}", 10, hashlib.sha256(variant_id.encode()).hexdigest(), c)


RELEASE = [
    _target("trt-fp16.onnx", runtime="tensorrt", precision="fp16", arch="aarch64", runtime_version="10.3"),
    _target("ort-int8.onnx", precision="int8"),
    _target("ort-fp32.onnx"),
    _target("ov-fp32.tar", runtime="openvino", arch="x86_64", runtime_version="2026.4"),
    _target("ov-gpu-fp16.tar", runtime="openvino", precision="fp16", accelerator="gpu", arch="x86_64"),
    _target("ort-cuda-fp32.onnx", accelerator="cuda"),
]


@pytest.fixture(params=["jetson", "pi5", "intel-vnni", "intel-avx2"])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, HardwareProfile]:
    name = request.param
    if name == "jetson":
        return name, probe(trees.jetson_orin(tmp_path), JETSON_RT)
    if name == "pi5":
        return name, probe(trees.raspberry_pi_5(tmp_path), PI_RT)
    p = probe(trees.intel_nuc(tmp_path), ORT_OV)
    if name == "intel-avx2":
        from dataclasses import replace

        p = replace(p, cpu_flags=p.cpu_flags - {"avx_vnni"})
    return name, p


EXPECTED = {
    "jetson": (["trt-fp16.onnx", "ort-cuda-fp32.onnx", "ort-int8.onnx", "ort-fp32.onnx"],
               {"ov-fp32.tar": "openvino: built for x86_64, device is aarch64"}),
    "pi5": (["ort-int8.onnx", "ort-fp32.onnx"],
            {"trt-fp16.onnx": "tensorrt: no NVIDIA GPU", "ort-cuda-fp32.onnx": "onnxruntime: no CUDA execution provider"}),
    "intel-vnni": (["ov-fp32.tar", "ort-int8.onnx", "ort-fp32.onnx"],
                   {"trt-fp16.onnx": "tensorrt: built for aarch64, device is x86_64",
                    "ov-gpu-fp16.tar": "openvino: no GPU device (have CPU)"}),
    "intel-avx2": (["ov-fp32.tar", "ort-fp32.onnx"], {"ort-int8.onnx": "int8: no VNNI/AMX/dotprod, expected slower"}),
}


def test_selection_ranks_and_explains(device: tuple[str, HardwareProfile]) -> None:
    name, profile = device
    selection = select(profile, RELEASE, GatePolicy())
    ranked = [c.target.name.rsplit("/", 1)[-1] for c in selection.candidates]
    expected_order, expected_reasons = EXPECTED[name]
    assert ranked == expected_order
    reasons = {k.rsplit("/", 1)[-1]: v for k, v in selection.reasons().items()}
    for variant_id, reason in expected_reasons.items():
        assert reasons[variant_id] == reason
    assert len(selection.candidates) + len(selection.rejected) == len(RELEASE)


def test_policy_can_forbid_int8_and_versions_are_checked(tmp_path: Path) -> None:
    profile = probe(trees.intel_nuc(tmp_path), ORT_OV)
    selection = select(profile, RELEASE, GatePolicy(allow_int8=False))
    assert "int8: disallowed" in selection.reasons()["models/m/1/ort-int8.onnx"]
    versions = [_target("ort-new.onnx", runtime_version="1.40"),
                _target("ov-new.tar", runtime="openvino", runtime_version="2027.1"),
                _target("ov-old.tar", runtime="openvino", runtime_version="2024.1")]
    selection = select(profile, versions, GatePolicy())
    reasons = selection.reasons()
    assert reasons["models/m/1/ort-new.onnx"] == "onnxruntime: variant needs 1.40 or newer, device has 1.32.0"
    assert reasons["models/m/1/ov-new.tar"] == "openvino: variant needs 2027.1 or newer, device has 2026.4.1"
    assert [c.target.name for c in selection.candidates] == ["models/m/1/ov-old.tar"]
