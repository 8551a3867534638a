"""System metrics of the device: CPU, memory, disk (psutil) and temperatures (sysfs).

Temperatures are read from a root folder passed in (default `/`), so tests point it at a fake tree:

    <root>/sys/class/thermal/thermal_zone<N>/{type,temp}   Jetson (CPU-therm, GPU-therm, …), Raspberry Pi
                                                           (cpu-thermal), most x86 (x86_pkg_temp, acpitz)
    <root>/sys/class/hwmon/hwmon<N>/{name,temp<K>_input}   x86 boards where thermal zones are absent

Values are millidegrees Celsius in text. Unreadable or absurd readings (a disabled zone reports
-40000 or errors with EINVAL on read) are skipped rather than reported as 0 °C. Zone names are made
unique (`cpu-thermal`, `cpu-thermal#1`) because Jetsons repeat types.

psutil's CPU percentage is measured between consecutive calls, so a sampler is created once and
asked every interval; it never blocks or spins.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import psutil

from agent.telemetry.wire import SystemSample

_MIN_C, _MAX_C = -40.0, 200.0
_MAX_ZONES = 32
_ZONE_NAME = re.compile(r"[^A-Za-z0-9_.#-]")


def read_temperatures(root: Path = Path("/")) -> dict[str, float]:
    """Zone name → °C from sysfs thermal zones, else hwmon sensors; empty when the device has none."""
    temps: dict[str, float] = {}
    zones_dir = root / "sys/class/thermal"
    for zone in sorted(zones_dir.glob("thermal_zone*"), key=_index):
        name = _read_text(zone / "type") or zone.name
        _put(temps, name, _read_millicelsius(zone / "temp"))
    if not temps:
        for hwmon in sorted((root / "sys/class/hwmon").glob("hwmon*"), key=_index):
            base = _read_text(hwmon / "name") or hwmon.name
            for sensor in sorted(hwmon.glob("temp*_input"), key=lambda p: p.name):
                label = _read_text(hwmon / sensor.name.replace("_input", "_label"))
                _put(temps, f"{base}-{label or sensor.name.split('_')[0]}", _read_millicelsius(sensor))
    return temps


def _put(temps: dict[str, float], name: str, value: float | None) -> None:
    if value is None or len(temps) >= _MAX_ZONES:
        return
    name = _ZONE_NAME.sub("_", name)[:48] or "zone"
    unique, n = name, 1
    while unique in temps:
        unique, n = f"{name}#{n}", n + 1
    temps[unique] = value


def _index(path: Path) -> int:
    digits = "".join(c for c in path.name if c.isdigit())
    return int(digits) if digits else 0


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()[:64] or None
    except OSError:
        return None


def _read_millicelsius(path: Path) -> float | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        value = int(text) / 1000.0
    except ValueError:
        return None
    return round(value, 1) if _MIN_C < value < _MAX_C else None


class SystemSampler:
    """One reading of CPU, memory, disk and temperatures per call."""

    def __init__(self, thermal_root: Path = Path("/"), disk_path: Path = Path("/")) -> None:
        self.thermal_root = thermal_root
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)  # primes the counter: the first real reading has a baseline

    def sample(self) -> SystemSample:
        memory = psutil.virtual_memory()
        try:
            disk = shutil.disk_usage(self.disk_path)
            disk_used_pct: float | None = round(100.0 * disk.used / disk.total, 2) if disk.total else None
        except OSError:
            disk_used_pct = None
        return SystemSample(
            cpu_pct=round(float(psutil.cpu_percent(interval=None)), 2),
            mem_used_mb=round((memory.total - memory.available) / 1e6, 2),
            mem_total_mb=round(memory.total / 1e6, 2),
            disk_used_pct=disk_used_pct,
            temps_c=read_temperatures(self.thermal_root),
        )
