"""Build a HardwareProfile by reading a filesystem root, plus the runtimes installed in this Python.

Every file is read relative to `root`, so tests point the probe at fake trees (a Jetson Orin, a
Raspberry Pi 5, an Intel box) and production points it at `/`. Only what the kernel and vendor
packages expose as files is used; no subprocess (`nvidia-smi`, `lscpu`) is run, which keeps the
probe fast, deterministic and testable. Missing files mean "not present", never an error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path

from agent.hardware.profile import HardwareProfile, RuntimeInventory

MAX_PROBE_FILE_BYTES = 1024 * 1024
_RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
                     "openvino": ("openvino",), "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11")}
# Jetson modules by device-tree name -> CUDA compute capability (NVIDIA's published table).
_JETSON_COMPUTE = (("orin", "8.7"), ("xavier", "7.2"), ("tx2", "6.2"), ("nano", "5.3"), ("tx1", "5.3"))
_X86_FLAG_MAP = {"amx_int8": "amx_int8", "amx_bf16": "amx_bf16", "amx_tile": "amx"}
_ARM_FLAG_MAP = {"asimd": "neon", "neon": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve",
                 "asimdhp": "fp16", "fphp": "fp16", "bf16": "bf16"}


def _read(root: Path, rel: str) -> str | None:
    try:
        with open(root / rel.lstrip("/"), "rb") as f:
            data = f.read(MAX_PROBE_FILE_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace").replace("\x00", "").strip()


def _cpuinfo(text: str) -> tuple[str | None, str, frozenset[str], int]:
    """(arch guess, model name, normalized flags, logical cores) from /proc/cpuinfo."""
    model = ""
    flags: set[str] = set()
    cores = 0
    arch: str | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            cores += 1
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value
        elif key == "flags":
            arch = "x86_64"
            raw = set(value.split())
            flags |= {f for f in raw if f.startswith(("avx", "sse4", "fma", "f16c", "sha_ni"))}
            flags |= {_X86_FLAG_MAP[f] for f in raw if f in _X86_FLAG_MAP}
        elif key == "features":
            raw = set(value.split())
            arch = "aarch64" if "asimd" in raw or "fp" in raw else "armv7l"
            flags |= {_ARM_FLAG_MAP[f] for f in raw if f in _ARM_FLAG_MAP}
    return arch, model, frozenset(flags), cores


def _memory_mb(text: str | None) -> int:
    if text:
        m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
        if m:
            return int(m.group(1)) // 1024
    return 0


def _l4t(text: str | None) -> str | None:
    """`# R36 (release), REVISION: 3.0, ...` -> "36.3.0"."""
    if not text:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else "unknown"


def _cuda_version(root: Path) -> str | None:
    doc = _read(root, "usr/local/cuda/version.json")
    if doc:
        try:
            version = json.loads(doc)["cuda"]["version"]
            return str(version)
        except (ValueError, KeyError, TypeError):
            pass
    txt = _read(root, "usr/local/cuda/version.txt")
    if txt:
        m = re.search(r"(\d+\.\d+(?:\.\d+)?)", txt)
        if m:
            return m.group(1)
    return None


def _tensorrt_library_version(root: Path) -> str | None:
    best: tuple[int, ...] | None = None
    for libdir in ("usr/lib/aarch64-linux-gnu", "usr/lib/x86_64-linux-gnu", "usr/local/tensorrt/lib"):
        folder = root / libdir
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            m = re.fullmatch(r"libnvinfer\.so\.(\d+(?:\.\d+)*)", name)
            if m:
                version = tuple(int(p) for p in m.group(1).split("."))
                if best is None or version > best:
                    best = version
    return ".".join(str(p) for p in best) if best else None


def _nvidia_dgpu(root: Path) -> str | None:
    folder = root / "proc/driver/nvidia/gpus"
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return None
    for entry in entries:
        info = _read(root, f"proc/driver/nvidia/gpus/{entry}/information") or ""
        m = re.search(r"^Model:\s*(.+)$", info, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return None


def installed_runtimes() -> RuntimeInventory:
    """Runtimes importable in this Python, their versions, ONNX Runtime EPs and OpenVINO devices."""
    versions: dict[str, str] = {}
    for runtime, packages in _RUNTIME_PACKAGES.items():
        for package in packages:
            try:
                versions[runtime] = importlib.metadata.version(package)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    providers: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    if "onnxruntime" in versions:
        try:
            ort = importlib.import_module("onnxruntime")
            providers = tuple(str(p) for p in ort.get_available_providers())
        except Exception:  # a broken install is reported as "no providers", not a crash of the probe
            providers = ()
    if "openvino" in versions:
        try:
            ov = importlib.import_module("openvino")
            devices = tuple(str(d) for d in ov.Core().available_devices)
        except Exception:
            devices = ()
    return RuntimeInventory(versions=versions, onnxruntime_providers=providers, openvino_devices=devices)


def probe(root: Path = Path("/"), runtimes: RuntimeInventory | None = None) -> HardwareProfile:
    """The profile of the machine whose filesystem is at `root`.

    `runtimes` defaults to what this Python has installed when probing the real root, and to nothing
    for any other root (a fake tree says nothing about the interpreter running the probe).
    """
    real = root.resolve() == Path("/")
    if runtimes is None:
        runtimes = installed_runtimes() if real else RuntimeInventory()
    arch_guess, cpu_model, flags, cores = _cpuinfo(_read(root, "proc/cpuinfo") or "")
    arch = platform.machine() if real else (arch_guess or "unknown")
    if real:
        cores = os.cpu_count() or cores
    board = _read(root, "proc/device-tree/model") or None
    l4t = _l4t(_read(root, "etc/nv_tegra_release"))
    raspberry_pi = board if board and board.startswith("Raspberry Pi") else None
    gpu: str | None = None
    compute: str | None = None
    if l4t is not None:
        lowered = (board or "").lower()
        compute = next((cc for key, cc in _JETSON_COMPUTE if key in lowered), None)
        gpu = f"{board or 'Jetson'} (integrated)"
    else:
        gpu = _nvidia_dgpu(root)
    if not cpu_model and board:
        cpu_model = board
    tensorrt_version = _tensorrt_library_version(root) or runtimes.versions.get("tensorrt")
    return HardwareProfile(
        arch=arch,
        cpu_model=cpu_model or "unknown",
        cpu_flags=flags,
        cores=max(cores, 1),
        memory_mb=_memory_mb(_read(root, "proc/meminfo")),
        board_model=board,
        jetson_l4t=l4t,
        raspberry_pi=raspberry_pi,
        nvidia_gpu=gpu,
        gpu_compute_capability=compute,
        cuda_version=_cuda_version(root),
        tensorrt_version=tensorrt_version,
        runtimes=runtimes,
    )
