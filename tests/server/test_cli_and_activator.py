"""`edgefleet-agent serve` as a real process (TCP and Unix socket), and the Activator adapter's
recovery paths (rollback after a restart, rollback to nothing, a model name that changes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.server.activator import ServingActivator
from controller.sample_models import SampleModel
from tests.server.conftest import (
    active,
    binary_request,
    json_request,
    parse_response,
    scaled_variant,
    start_server,
)


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).resolve().parents[2])


@pytest.fixture
def stop_after() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("serving "):
            return line.strip()
    raise AssertionError(f"server exited with {proc.wait(10)} before serving")


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_serve_command_over_tcp(digits_mlp: SampleModel, stop_after: list[subprocess.Popen[str]],
                                event_loop: str) -> None:
    if event_loop == "uvloop":
        pytest.importorskip("uvloop", reason="needs uvloop installed (the agent extra)")
    proc = _serve(str(digits_mlp.path), "--name", "digits", "--port", "0", "--threads", "1",
                  "--max-batch-size", "8", "--event-loop", event_loop)
    stop_after.append(proc)
    url = _first_line(proc).rsplit(" ", 1)[-1]
    assert url.startswith("http://127.0.0.1:")
    x = digits_mlp.golden.inputs[:3]
    body, headers = binary_request({"input": x})
    r = httpx.post(url + "/v2/models/digits/infer", content=body, headers=headers, timeout=10)
    assert r.status_code == 200
    _, outs = parse_response(r.content, r.headers)
    np.testing.assert_allclose(outs["probabilities"], digits_mlp.golden.reference_outputs[:3], rtol=1e-4, atol=1e-5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_serve_command_on_a_unix_socket(digits_mlp: SampleModel, tmp_path: Path,
                                        stop_after: list[subprocess.Popen[str]]) -> None:
    sock = tmp_path / "infer.sock"
    proc = _serve(str(digits_mlp.path), "--name", "digits", "--unix-socket", str(sock), "--runtime", "openvino",
                  "--threads", "1")
    stop_after.append(proc)
    assert _first_line(proc).endswith(str(sock))
    assert sock.is_socket() and (os.stat(sock).st_mode & 0o777) == 0o660
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://agent", timeout=10) as c:
        assert c.get("/v2/models/digits").json()["platform"] == "openvino"
        r = c.post("/v2/models/digits/infer", json=json_request({"input": digits_mlp.golden.inputs[:1]}))
        assert r.status_code == 200, r.text
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0


def test_serve_command_refuses_a_bad_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    done = subprocess.run([sys.executable, "-m", "agent.cli", "serve", str(bad), "--name", "x", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "could not load" in done.stderr


def test_activator_recovers_without_a_loaded_previous(digits_mlp: SampleModel, tmp_path: Path) -> None:
    srv = start_server()
    try:
        activator = ServingActivator(srv.bridge, srv.models)
        one = active(shutil.copy(digits_mlp.path, tmp_path / "one.onnx"), "1")
        two = active(scaled_variant(digits_mlp, 0.5, tmp_path / "two.onnx"), "2")
        # a restart during probation: the new model is served, the old one is not loaded at all
        activator.restore(two)
        activator.rollback(one)
        served = srv.models.model("digits")
        assert served.current.version == "1" and served.current.origin == one.ref.sha256
        r = httpx.post(srv.url + "/v2/models/digits/infer", json=json_request({"input": digits_mlp.golden.inputs[:1]}))
        assert parse_response(r.content, r.headers)[0]["model_version"] == "1"
        # rolling back to "nothing served before" stops serving the rejected model
        activator.activate(two)
        activator.rollback(None)
        assert "digits" not in srv.models.models
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 503
    finally:
        srv.stop()


def test_activator_handles_a_model_name_change(digits_mlp: SampleModel, tmp_path: Path) -> None:
    srv = start_server()
    try:
        activator = ServingActivator(srv.bridge, srv.models)
        old = active(shutil.copy(digits_mlp.path, tmp_path / "old.onnx"), "1", model="digits")
        new = active(shutil.copy(digits_mlp.path, tmp_path / "new.onnx"), "1", model="digits-v2")
        activator.restore(old)
        activator.activate(new)
        assert set(srv.models.models) == {"digits", "digits-v2"}  # old name keeps serving its apps
        activator.rollback(old)
        assert set(srv.models.models) == {"digits"}
        activator.activate(new)
        activator.commit(new)
        assert set(srv.models.models) == {"digits-v2"}
    finally:
        srv.stop()
