"""Fake device filesystem trees for the hardware probe: Jetson AGX Orin, Raspberry Pi 5, an Intel box.

File contents are abridged copies of what those devices really expose (/proc/cpuinfo, /proc/meminfo,
the device-tree model with its trailing NUL, /etc/nv_tegra_release, CUDA's version.json, TensorRT's
versioned library names).
"""

from __future__ import annotations

from pathlib import Path

_ORIN_CORE = """processor\t: {n}
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd42
CPU revision\t: 1

"""

_PI5_CORE = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

"""

_INTEL_CORE = """processor\t: {n}
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 154
model name\t: 12th Gen Intel(R) Core(TM) i7-1270P
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand avx2 bmi2 sha_ni avx_vnni
bugs\t\t: spectre_v1 spectre_v2

"""


def _write(root: Path, rel: str, text: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def _meminfo(kb: int) -> str:
    return f"MemTotal:       {kb} kB\nMemFree:         1234567 kB\nMemAvailable:    2345678 kB\n"


def jetson_orin(root: Path) -> Path:
    _write(root, "proc/cpuinfo", "".join(_ORIN_CORE.format(n=i) for i in range(12)))
    _write(root, "proc/meminfo", _meminfo(64_335_556))
    _write(root, "proc/device-tree/model", b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    _write(root, "etc/nv_tegra_release",
           "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19 23:24:25 UTC 2024\n")
    _write(root, "usr/local/cuda/version.json", '{"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}')
    for name in ("libnvinfer.so", "libnvinfer.so.10", "libnvinfer.so.10.3.0"):
        _write(root, f"usr/lib/aarch64-linux-gnu/{name}", b"")
    return root


def raspberry_pi_5(root: Path) -> Path:
    _write(root, "proc/cpuinfo", "".join(_PI5_CORE.format(n=i) for i in range(4))
           + "Revision\t: d04170\nSerial\t\t: 1a2b3c4d5e6f7a8b\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n")
    _write(root, "proc/meminfo", _meminfo(8_245_016))
    _write(root, "proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\x00")
    return root


def intel_nuc(root: Path) -> Path:
    _write(root, "proc/cpuinfo", "".join(_INTEL_CORE.format(n=i) for i in range(16)))
    _write(root, "proc/meminfo", _meminfo(32_562_444))
    return root
