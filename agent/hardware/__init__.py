"""This device's hardware profile: CPU, memory, accelerators and installed runtimes.

`probe(root)` reads files under an injectable root; `HardwareProfile` is the frozen result. The probe
raises nothing: a file it cannot read means the feature is absent.
"""

from __future__ import annotations

from agent.hardware.probe import installed_runtimes, probe
from agent.hardware.profile import INT8_CPU_FEATURES, HardwareProfile, RuntimeInventory

__all__ = ["INT8_CPU_FEATURES", "HardwareProfile", "RuntimeInventory", "installed_runtimes", "probe"]
