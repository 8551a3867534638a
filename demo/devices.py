"""Simulated devices: each one a real `edgefleet-agent` process with its own state folder and probe root.

A device enrolls with a one-time token exactly as on real hardware (`edgefleet-agent enroll`: key
generated on the device, CSR, MQTT credentials, pinned roots), reads a fake board from its probe root
(`demo/probe_roots/`: a Jetson AGX Orin, a Raspberry Pi 5, an Intel NUC) and runs ONNX Runtime or
OpenVINO on this CPU. A client thread sends inference requests to its local Open Inference Protocol
server and records the latency and model version of every answer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from demo.host import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE_ROOTS = Path(__file__).resolve().parent / "probe_roots"
LATENCY_WINDOW = 2000


@dataclass
class Traffic:
    """Client-side view of one device's inference endpoint."""

    latencies_ms: dict[str, deque[float]] = field(default_factory=dict)
    errors: int = 0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, version: str, latency_ms: float) -> None:
        with self.lock:
            self.requests += 1
            self.latencies_ms.setdefault(version, deque(maxlen=LATENCY_WINDOW)).append(latency_ms)

    def percentiles(self, version: str) -> tuple[float, float] | None:
        with self.lock:
            values = list(self.latencies_ms.get(version, ()))
        if not values:
            return None
        return float(np.percentile(values, 50)), float(np.percentile(values, 95))


class DemoDevice:
    def __init__(self, device_id: str, board: str, tags: list[str], work_dir: Path) -> None:
        self.device_id = device_id
        self.board = board
        self.tags = tags
        self.dir = work_dir / device_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.dir / "state"
        self.config_path = self.dir / "agent.toml"
        self.log_path = self.dir / "agent.log"
        self.server_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.traffic = Traffic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def probe_root(self) -> Path:
        return PROBE_ROOTS / self.board

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}

    def enroll(self, controller_url: str, token: str) -> None:
        token_file = self.dir / "enrollment.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", "enroll", "--controller", controller_url, "--state-dir",
             str(self.state_dir), "--token-file", str(token_file), "--device-id", self.device_id,
             "--probe-root", str(self.probe_root)],
            cwd=REPO_ROOT, env=self._env(), capture_output=True, timeout=120, check=False,
        )
        token_file.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"{self.device_id}: enrollment failed: "
                               f"{(done.stderr or done.stdout).decode(errors='replace')[-600:]}")

    def configure(self, controller_url: str, **options: Any) -> None:
        repo = f"{controller_url}/artifacts/repository"
        values = {"device_id": self.device_id, "state_dir": "state", "hardware_probe_root": str(self.probe_root),
                  "repository_metadata_url": f"{repo}/metadata/", "repository_targets_url": f"{repo}/",
                  "server_port": self.server_port, "server_threads": 1, "mqtt_reconnect_max_s": 2,
                  "gate_latency_rounds": 60, "probation_poll_interval_s": 0.25,
                  "telemetry_sample_every_s": 2.0, "telemetry_batch_every_s": 4.0, **options}
        self.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(self.config_path)],
                                     cwd=REPO_ROOT, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # --- traffic -----------------------------------------------------------------------------------

    def infer(self, inputs: np.ndarray, input_name: str, model: str = "digits", timeout_s: float = 5.0
              ) -> tuple[np.ndarray, str]:
        body = {"inputs": [{"name": input_name, "shape": list(inputs.shape), "datatype": "FP32",
                            "data": inputs.astype(np.float32).ravel().tolist()}]}
        request = urllib.request.Request(f"http://127.0.0.1:{self.server_port}/v2/models/{model}/infer",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            doc = json.loads(response.read())
        out = doc["outputs"][0]
        scores = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
        return scores.argmax(axis=1), str(doc.get("model_version"))

    def start_traffic(self, inputs: np.ndarray, input_name: str, interval_s: float = 0.1) -> None:
        def loop() -> None:
            i = 0
            while not self._stop.wait(interval_s):
                row = inputs[i % len(inputs): i % len(inputs) + 1]
                i += 1
                started = time.perf_counter()
                try:
                    _, version = self.infer(row, input_name)
                except (OSError, ValueError, KeyError):
                    with self.traffic.lock:
                        self.traffic.errors += 1
                    continue
                self.traffic.add(version, (time.perf_counter() - started) * 1000.0)

        self._thread = threading.Thread(target=loop, name=f"traffic-{self.device_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 20.0) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
