"""The operator CLI through typer's test runner against a live controller (uvicorn on a free port)."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from controller.cli import app
from controller.rollouts import RolloutState
from tests.dashboard.conftest import LiveController, live_controller  # noqa: F401 - the fixture

runner = CliRunner()


def _run(live: LiveController, *args: str, role: str = "operator") -> Any:
    env = {"EDGEFLEET_URL": live.url, "EDGEFLEET_TOKEN": live.tokens[role], "COLUMNS": "200"}
    return runner.invoke(app, list(args), env=env)


def test_rollout_status_pause_resume(live_controller: LiveController) -> None:  # noqa: F811
    result = _run(live_controller, "rollout", "status", "r-v2")
    assert result.exit_code == 0, result.output
    assert "r-v2" in result.output and "running" in result.output and "1/1" not in result.output
    doc = json.loads(_run(live_controller, "rollout", "status", "r-v2", "--json").output)
    assert doc["id"] == "r-v2" and [w["size"] for w in doc["waves_detail"]] == [1, 5]
    result = _run(live_controller, "rollout", "pause", "r-v2", "--reason", "checking the canary")
    assert result.exit_code == 0 and "paused" in result.output, result.output
    assert live_controller.engine.store.load("r-v2").state == RolloutState.PAUSED
    history = live_controller.engine.store.load("r-v2").history
    assert history[-1].reason == "checking the canary"
    assert _run(live_controller, "rollout", "resume", "r-v2").exit_code == 0
    assert live_controller.engine.store.load("r-v2").state == RolloutState.RUNNING
    listing = json.loads(_run(live_controller, "rollout", "list", "--json").output)
    assert [r["id"] for r in listing] == ["r-v2"]


def test_rollout_create_splits_the_fleet_into_waves(live_controller: LiveController) -> None:  # noqa: F811
    result = _run(live_controller, "rollout", "create", "r-cli", "--model", "digits", "--version", "1",
                  "--hardware-class", "rpi5", "--tag", "lab", "--waves", "1,100%", "--soak-s", "5")
    assert result.exit_code == 0, result.output
    assert "2 devices in 2 waves" in result.output
    record = live_controller.engine.store.load("r-cli")
    assert {d for d in record.devices} == {"pi5-1", "pi5-2"}


def test_user_errors_are_one_line_without_a_traceback(live_controller: LiveController) -> None:  # noqa: F811
    for args, expected in (
        (("rollout", "status", "no-such-rollout"), "no-such-rollout"),
        (("rollout", "create", "r-x", "--model", "digits", "--version", "2", "--tag", "lab", "--waves", "1,lots"),
         "'lots' is neither"),
        (("rollout", "create", "r-x", "--model", "digits", "--version", "2"), "say which devices"),
        (("rollout", "abort", "r-v2"), "operator role"),  # a viewer token
        (("devices", "show", "ghost"), "ghost"),
    ):
        result = _run(live_controller, *args, role="viewer" if args[1] == "abort" else "operator")
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2, result.output


def test_devices_show_has_the_latency_table_and_gate_report(live_controller: LiveController) -> None:  # noqa: F811
    result = _run(live_controller, "devices", "show", "orin-1")
    assert result.exit_code == 0, result.output
    assert "p95 ms" in result.output and "gate_passed" in result.output and "ort-fp32-cuda" in result.output
    doc = json.loads(_run(live_controller, "devices", "show", "orin-1", "--json").output)
    by_version = doc["latency"]["by_version"]
    assert set(by_version) == {"1", "2"} and by_version["1"]["requests"] == 300
    assert doc["last_gate"]["kind"] == "gate_passed"


def test_model_list_and_show(live_controller: LiveController) -> None:  # noqa: F811
    doc = json.loads(_run(live_controller, "model", "list", "--json").output)
    assert [(r["name"], r["version"]) for r in doc["items"]] == [("digits", "1")]
    result = _run(live_controller, "model", "show", "digits", "1")
    assert result.exit_code == 0 and "0.9711" in result.output and "ort-int8" in result.output, result.output


def test_model_push_refuses_a_file_that_is_not_onnx(live_controller: LiveController, tmp_path: Any) -> None:  # noqa: F811
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model at all")
    golden = tmp_path / "golden.npz"
    golden.write_bytes(b"PK")
    result = _run(live_controller, "model", "push", str(bogus), "--golden", str(golden), "--name", "x",
                  "--version", "1")
    assert result.exit_code == 2, result.output
    assert "upload refused" in result.output and "Traceback" not in result.output


def test_model_push_uploads_builds_and_publishes(live_controller: LiveController, digits_mlp: Any) -> None:  # noqa: F811
    result = _run(live_controller, "model", "push", str(digits_mlp.path), "--golden", str(digits_mlp.golden_path),
                  "--name", "digits-cli", "--version", "7")
    assert result.exit_code == 0, result.output
    assert "digits-cli 7: published" in result.output and "onnxruntime-fp32" in result.output, result.output
    doc = json.loads(_run(live_controller, "model", "show", "digits-cli", "7", "--json").output)
    assert doc["status"] == "published" and doc["variants"][0]["accuracy"] > 0.9


def test_rollout_status_watch_returns_once_the_rollout_has_ended(live_controller: LiveController) -> None:  # noqa: F811
    assert _run(live_controller, "rollout", "abort", "r-v2", "--reason", "done here").exit_code == 0
    result = _run(live_controller, "rollout", "status", "r-v2", "--watch", "--interval-s", "0.1")
    assert result.exit_code == 0 and "aborted" in result.output, result.output
