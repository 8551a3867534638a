"""The hardware profile for the daemon, probed in a child process.

Why a child: listing ONNX Runtime's execution providers and OpenVINO's devices imports both
runtimes, which would add tens of megabytes to an agent that serves nothing yet. The child prints
`HardwareProfile.to_dict()` as JSON and exits; the daemon keeps only the small frozen value.

Runtimes are always the ones installed for this interpreter: the daemon runs them, whatever a fake
probe root (a Jetson or Raspberry Pi tree in a demo) says about the board.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.hardware.profile import HardwareProfile, RuntimeInventory

log = logging.getLogger(__name__)
MAX_PROFILE_BYTES = 256 * 1024


def probe_profile(root: Path, timeout_s: float = 120.0) -> HardwareProfile:
    """Probe `root` in a child process; on any failure of the child, probe in this process."""
    command = [sys.executable, "-m", "agent.daemon.hardware", str(root)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise ValueError(f"exit status {done.returncode}: {done.stderr.decode('utf-8', 'replace')[-400:]}")
        if len(done.stdout) > MAX_PROFILE_BYTES:
            raise ValueError(f"profile is {len(done.stdout)} bytes, limit {MAX_PROFILE_BYTES}")
        return profile_from_dict(json.loads(done.stdout))
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as e:
        log.warning("hardware probe child failed (%s); probing in-process", e)
        from agent.hardware.probe import installed_runtimes, probe

        return probe(root, runtimes=installed_runtimes())


def profile_from_dict(doc: Mapping[str, Any]) -> HardwareProfile:
    """The inverse of `HardwareProfile.to_dict` (derived keys such as `hardware_class` are ignored)."""

    def opt(key: str) -> str | None:
        value = doc.get(key)
        return None if value is None else str(value)

    versions = doc.get("runtimes", {})
    if not isinstance(versions, dict):
        raise TypeError("runtimes must be an object")
    return HardwareProfile(
        arch=str(doc["arch"]), cpu_model=str(doc["cpu_model"]),
        cpu_flags=frozenset(str(f) for f in doc.get("cpu_flags", [])), cores=int(doc["cores"]),
        memory_mb=int(doc["memory_mb"]), board_model=opt("board_model"), jetson_l4t=opt("jetson_l4t"),
        raspberry_pi=opt("raspberry_pi"), nvidia_gpu=opt("nvidia_gpu"),
        gpu_compute_capability=opt("gpu_compute_capability"), cuda_version=opt("cuda_version"),
        tensorrt_version=opt("tensorrt_version"),
        runtimes=RuntimeInventory(
            versions={str(k): str(v) for k, v in versions.items()},
            onnxruntime_providers=tuple(str(p) for p in doc.get("onnxruntime_providers", [])),
            openvino_devices=tuple(str(d) for d in doc.get("openvino_devices", []))),
    )


def _main(argv: list[str]) -> int:
    from agent.hardware.probe import installed_runtimes, probe

    root = Path(argv[0]) if argv else Path("/")
    print(json.dumps(probe(root, runtimes=installed_runtimes()).to_dict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
