"""`edgefleet-agent status` on a device whose daemon is not running: reads the state folder only."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest

from agent.daemon import status
from agent.daemon.config import load_config
from agent.slots import FileSlotStore, ModelRef


def test_status_of_a_stopped_device_with_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "device.json"
    config_path.write_text(json.dumps({"device_id": "edge-s", "state_dir": "state",
                                       "repository_metadata_url": "http://h/metadata/",
                                       "repository_targets_url": "http://h/"}))
    config = load_config(config_path, environ={})
    slots = FileSlotStore(config.engine_root)
    staged = tmp_path / "model.onnx"
    staged.write_bytes(b"model bytes")
    sha = hashlib.sha256(b"model bytes").hexdigest()
    slots.adopt(sha, "ort-fp32.onnx", staged)
    slots.set_current(ModelRef(sha, "ort-fp32.onnx", "models/digits/3/ort-fp32.onnx", "onnxruntime", "fp32",
                               "digits", "3"))
    config.runtime_path.write_text(json.dumps({"pid": 2**22 + 12345, "state": "running", "server_url": None}))
    (config.outbox_dir).mkdir(parents=True)
    (config.outbox_dir / "7.msg").write_bytes(b"{}\n")

    doc = status.collect(config)
    assert doc["daemon"]["running"] is False  # that pid does not exist
    assert doc["current"]["version"] == "3" and doc["previous"] is None
    assert doc["update"]["state"] == "IDLE" and doc["outbox_pending"] == 1
    assert doc["trust"] == {"enrolled": False} and doc["server_ready"] is None

    assert status.run(argparse.Namespace(config=config_path, json=False)) == 3
    text = capsys.readouterr().out
    assert "not running" in text and "digits 3 ort-fp32.onnx [onnxruntime/fp32/cpu]" in text
    assert "1 message(s) waiting" in text


def test_status_with_a_bad_config_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "device.json"
    bad.write_text("{}")
    assert status.run(argparse.Namespace(config=bad, json=True)) == 2
    assert "device_id is required" in capsys.readouterr().err
