"""kill -9 at each step of a real update, then restart: the device must serve a complete, verified
model (old or new, never none), keep a consistent journal, and hold at most one partial download."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from agent.slots import FileSlotStore
from agent.state import JournalFile, State
from agent.state.codec import plan_to_json
from controller.sample_models import SampleModel
from manifests.repository import NewTarget
from tests.agent import bad_models
from tests.manifests.world import World

REPO_ROOT = Path(__file__).resolve().parents[2]
V1 = "models/digits/1/ort-fp32.onnx"
V2 = "models/digits/2/ort-int8.onnx"
# step -> (status after restart, model served afterwards)
STEPS = {
    "download": ("success", V2),
    "staged": ("success", V2),
    "gate": ("success", V2),
    "pointers": ("rolled_back", V1),
    "activated": ("rolled_back", V1),
    "commit": ("success", V2),
}


def run(mode: str, root: Path, repo: Path, plan: Path | None, golden: Path, kill_at: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_TEST_KILL_AT")}
    if kill_at:
        env["EDGEFLEET_TEST_KILL_AT"] = kill_at
        env["EDGEFLEET_TEST_KILL_AT_PIDFILE"] = str(root.parent / "gate-child.pid")
    return subprocess.run([sys.executable, "-m", "tests.agent.kill_runner", mode, str(root), repo.as_uri(),
                           str(plan) if plan else "-", str(golden)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def publish(world: World, version: str, vid: str, model: Path, golden: Path, **extra: str) -> str:
    custom = {"kind": "variant", "model": "digits", "version": version, "release_counter": 1,
              "runtime": "onnxruntime", "precision": "fp32", "arch": "x86_64", **extra}
    targets = world.repo.add_targets([
        NewTarget(f"models/digits/{version}/{vid}", model.read_bytes(), custom),
        NewTarget(f"models/digits/{version}/golden.npz", golden.read_bytes(),
                  {"kind": "golden", "model": "digits", "version": version, "release_counter": 1})])
    return plan_to_json(world.client.verify(world.sign(world.assignment(targets))))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, digits_mlp: SampleModel) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("kill9")
    world = World(tmp)
    int8 = bad_models.static_int8(digits_mlp.path, tmp / "int8.onnx", digits_mlp.golden.inputs)
    plans = (tmp / "v1.json", tmp / "v2.json")
    plans[0].write_text(publish(world, "1", "ort-fp32.onnx", digits_mlp.path, digits_mlp.golden_path))
    plans[1].write_text(publish(world, "2", "ort-int8.onnx", int8, digits_mlp.golden_path, precision="int8"))
    return tmp / "repo", plans[0], plans[1]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_serving_invariants(root: Path) -> None:
    slots = FileSlotStore(root)
    current = slots.current()
    assert current is not None, "the device serves no model"
    assert current.target in (V1, V2) and slots.verify(current), "current names an incomplete or altered slot"
    journal = JournalFile(root / "journal.json").load()  # parses: the journal is whole
    assert journal.deployment_id is not None
    assert len(list((root / "staging").glob("*.part"))) <= 1


@pytest.fixture(scope="module")
def installed(releases: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory,
              digits_mlp: SampleModel) -> Path:
    """A device that committed release 1 (copied for each test)."""
    repo, v1, _ = releases
    root = tmp_path_factory.mktemp("installed") / "device"
    first = run("apply", root, repo, v1, digits_mlp.golden_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["current"] == V1
    return root


@pytest.mark.parametrize("step", list(STEPS))
def test_kill9_at_each_step_then_restart(step: str, releases: tuple[Path, Path, Path], installed: Path,
                                         tmp_path: Path, digits_mlp: SampleModel) -> None:
    repo, _, v2 = releases
    root = tmp_path / "device"
    shutil.copytree(installed, root)
    golden = digits_mlp.golden_path

    killed = run("apply", root, repo, v2, golden, kill_at=step)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    assert JournalFile(root / "journal.json").load().state is not State.IDLE
    assert_serving_invariants(root)
    if step == "download":  # killed mid-download: the one partial file is left, to be resumed
        assert JournalFile(root / "journal.json").load().state is State.DOWNLOAD
        assert len(list((root / "staging").glob("*.part"))) == 1
    if step == "gate":  # the measuring child noticed its parent died and left
        pid = int((root.parent / "gate-child.pid").read_text())
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, "the gate child outlived the killed agent"
            time.sleep(0.05)

    restarted = run("recover", root, repo, None, golden)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    result = json.loads(restarted.stdout.splitlines()[-1])
    status, serving = STEPS[step]
    assert (result["status"], result["current"]) == (status, serving), result
    assert_serving_invariants(root)
    slots = FileSlotStore(root)
    assert slots.previous() is None and list((root / "staging").iterdir()) == []
    assert JournalFile(root / "journal.json").load().state is State.IDLE
    current = slots.current()
    assert current is not None and slots.slots() == (current.sha256,)
    # the served model answers the golden set like the model it claims to be
    agreement = np.mean(np.array(result["served_top1"]) == np.argmax(digits_mlp.golden.reference_outputs, axis=1))
    assert agreement >= 0.95
