"""`python -m demo` end to end, shortened to three devices (one per board): real agents, real broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_demo_scenario_passes_every_check(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "demo", "--devices", "3", "--state-dir", str(tmp_path / "demo"),
                           "--timeout-s", "120"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=290)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, out[-6000:]
    assert "demo passed" in out
    for expected in ("every device serves v2", "refused v3", "rollout halted", "back on v1", "none failed",
                     "/ui/"):
        assert expected in out, f"{expected!r} missing from the demo output:\n{out[-4000:]}"
    assert "FAILED" not in out


def test_demo_refuses_too_few_devices(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "demo", "--devices", "2", "--state-dir", str(tmp_path / "d")],
                          cwd=REPO_ROOT, env=env, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert "at least 3" in done.stdout.decode()
