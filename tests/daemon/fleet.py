"""A small controller side for daemon tests, built from the project's own libraries.

- `ControllerSide`: keyring, image repository (local folder) served over real HTTP, director
  signing, and a paho client that publishes retained assignments and records what the device says.
- `AgentProcess`: `edgefleet-agent run` as a real subprocess with its own config and state folder,
  its log kept for failure messages, plus an sd_notify socket that records READY/WATCHDOG/STOPPING.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import wire
from agent.telemetry import wire as telemetry_wire
from controller.sample_models import SampleModel
from manifests import assignment as A
from manifests import director
from manifests.keyring import Keyring
from manifests.repository import ImageRepository, NewTarget
from manifests.store import LocalFolderStore
from manifests.verify import SignedTarget

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, log: Callable[[], str] | None = None) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` (and the agent's log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}" + (f"\n--- agent log ---\n{log()}"
                                                                                 if log else ""))


def free_port() -> int:
    """A free port below the ephemeral range, so no outgoing connection can take it before the agent
    binds it (a port picked with bind(0) can be reused as the source port of the agent's own clients)."""
    low, _ = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


class ControllerSide:
    def __init__(self, tmp: Path, broker_port: int, device_id: str) -> None:
        self.device_id = device_id
        self.keys = Keyring.create(tmp / "keys")
        self.repo_dir = tmp / "repo"
        self.repo = ImageRepository(LocalFolderStore(self.repo_dir), self.keys)
        self.repo.initialize()
        self.roots = tmp / "roots"
        self.roots.mkdir()
        (self.roots / "director-root.json").write_bytes(self.keys.root_history("director")[0])
        (self.roots / "image-root.json").write_bytes(self.keys.root_history("image")[0])
        handler = functools.partial(_QuietHandler, directory=str(self.repo_dir))
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.next_version = 1
        self.lock = threading.Lock()
        self.messages: list[tuple[str, wire.Message]] = []
        self.telemetry: list[telemetry_wire.TelemetryBatch] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"controller-{device_id}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"{wire.TOPIC_ROOT}/{device_id}/+", qos=1)
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.http.shutdown()
        self.http.server_close()

    # --- releases and assignments ---------------------------------------------------------------

    def publish_release(self, model: SampleModel, version: str, counter: int, *, name: str = "digits",
                        model_bytes: bytes | None = None) -> tuple[SignedTarget, ...]:
        custom = {"kind": "variant", "model": name, "version": version, "release_counter": counter,
                  "runtime": "onnxruntime", "precision": "fp32", "arch": "any",
                  "accuracy": f"{model.accuracy:.6f}"}
        return self.repo.add_targets([
            NewTarget(f"models/{name}/{version}/ort-fp32.onnx", model_bytes or model.path.read_bytes(), custom),
            NewTarget(f"models/{name}/{version}/golden.npz", model.golden_path.read_bytes(),
                      {"kind": "golden", "model": name, "version": version, "release_counter": counter}),
        ])

    def assign(self, targets: Sequence[SignedTarget], probation_window_s: float = 1.0) -> int:
        """Sign an assignment for `targets` and publish it retained; returns its version."""
        first = targets[0]
        _, model, version, _ = first.name.split("/")
        issued = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=5)
        a = A.Assignment(device_id=self.device_id, version=self.next_version, issued_at=issued,
                         expires_at=issued + timedelta(days=1), release=A.ReleaseRef(model, version),
                         targets=tuple(A.TargetPin(t.name, t.length, t.sha256) for t in targets),
                         probation=A.ProbationPolicy(window_s=probation_window_s), rollout_id="r-test")
        self.next_version += 1
        envelope = director.sign_envelope(a, self.keys.signers("director"), self.keys.root_history("director")[1:])
        self.publish_raw(envelope)
        return a.version

    def publish_raw(self, payload: bytes) -> None:
        info = self.client.publish(wire.topic(self.device_id, "assignment"), payload, qos=1, retain=True)
        info.wait_for_publish(10)

    # --- what the device said -------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        channel = message.topic.rsplit("/", 1)[-1]
        if channel == "assignment" or not message.payload:
            return
        if channel == "telemetry":
            batch = telemetry_wire.decode(bytes(message.payload))
            with self.lock:
                self.telemetry.append(batch)
            return
        decoded = wire.decode(bytes(message.payload))
        with self.lock:
            self.messages.append((channel, decoded))

    def model_requests(self, version: str) -> int:
        """Requests of digits `version` counted in the telemetry received so far."""
        with self.lock:
            return sum(m.requests for b in self.telemetry for p in b.points for m in p.models
                       if m.version == version)

    def events(self) -> list[wire.Event]:
        with self.lock:
            return [m for _, m in self.messages if isinstance(m, wire.Event)]

    def event_kinds(self, assignment_version: int | None = None) -> list[str]:
        return [e.kind for e in self.events()
                if assignment_version is None or e.assignment_version == assignment_version]

    def event(self, kind: str, assignment_version: int | None = None) -> wire.Event | None:
        return next((e for e in self.events() if e.kind == kind
                     and (assignment_version is None or e.assignment_version == assignment_version)), None)

    def last_status(self) -> wire.Status | None:
        with self.lock:
            statuses = [m for _, m in self.messages if isinstance(m, wire.Status)]
        return max(statuses, key=lambda s: s.seq) if statuses else None

    def presence(self) -> list[str]:
        with self.lock:
            return [m.state for _, m in self.messages if isinstance(m, wire.Presence)]


class NotifySocket:
    """A bound Unix datagram socket standing in for systemd; records every notify message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


class AgentProcess:
    def __init__(self, tmp: Path, controller: ControllerSide, broker_port: int, **extra: Any) -> None:
        self.state_dir = tmp / "device"
        self.server_port = free_port()
        self.config_path = tmp / "device.toml"
        self.log_path = tmp / "agent.log"
        self.notify = NotifySocket(tmp / "notify.sock")
        self.controller = controller
        self.broker_port = broker_port
        self.options: dict[str, Any] = {"gate_latency_rounds": 40, "probation_poll_interval_s": 0.2,
                                        "server_threads": 1, "telemetry_sample_every_s": 0.5,
                                        "telemetry_batch_every_s": 0.5, **extra}
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, **extra: Any) -> None:
        """(Re)write the device's TOML config; `extra` adds or replaces top-level keys."""
        self.options.update(extra)
        c = self.controller
        lines = [f'device_id = "{c.device_id}"', 'state_dir = "device"',
                 *(f"{k} = {json.dumps(v)}" for k, v in self.options.items()),
                 "[repository]", f'metadata_url = "{c.base_url}/metadata/"', f'targets_url = "{c.base_url}/"',
                 "[trust]", f'director_root_file = "{c.roots / "director-root.json"}"',
                 f'image_root_file = "{c.roots / "image-root.json"}"',
                 "[mqtt]", 'host = "127.0.0.1"', f"port = {self.broker_port}", "reconnect_max_s = 1",
                 "[server]", f"port = {self.server_port}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def start(self, command: Sequence[str] = ("agent.cli", "run"), **env_extra: str) -> None:
        """Start `python -m <command> --config …` (a test runner of the same daemon may stand in)."""
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), "WATCHDOG_USEC": "400000",
               "PYTHONPATH": str(REPO_ROOT), **env_extra}
        env.pop("WATCHDOG_PID", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", *command, "--config", str(self.config_path)],
                                         cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def status(self) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--json", "--config",
                               str(self.config_path)], cwd=REPO_ROOT, capture_output=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert done.returncode in (0, 3), done.stderr.decode()
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    # --- the local inference endpoint -----------------------------------------------------------

    def infer(self, model: SampleModel, name: str = "digits", rows: int = 16) -> tuple[np.ndarray, str]:
        """Top-1 classes for the first `rows` golden inputs, and the model version that answered."""
        scores, version = self.infer_scores(model, name, rows)
        return scores.argmax(axis=1), version

    def infer_scores(self, model: SampleModel, name: str = "digits", rows: int = 16,
                     timeout_s: float = 10.0) -> tuple[np.ndarray, str]:
        """The full output scores for the first `rows` golden inputs, and the model version that answered."""
        x = model.golden.inputs[:rows].astype(np.float32)
        body = {"inputs": [{"name": model.input_name, "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        request = urllib.request.Request(f"{self.url}/v2/models/{name}/infer", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            doc = json.loads(response.read())
        out = next(o for o in doc["outputs"] if o["name"] == model.output_name)
        return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"]), str(doc.get("model_version"))

    def mapped_libraries(self, packages: Sequence[str]) -> set[str]:
        """Which of `packages` have a shared library mapped into the agent process (i.e. were imported)."""
        assert self.proc is not None
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        return {p for p in packages if f"/site-packages/{p}/" in maps or f"/site-packages/{p}.libs/" in maps}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def serving(self, model: SampleModel) -> bool:
        try:
            self.infer(model, rows=1)
        except OSError:
            return False
        return True


@contextlib.contextmanager
def one_agent(folder: Path, broker_port: int, device_id: str) -> Iterator[tuple[ControllerSide, AgentProcess]]:
    """A controller side and one agent process for it; the agent is killed and both closed afterwards."""
    controller = ControllerSide(folder, broker_port, device_id)
    agent = AgentProcess(folder, controller, broker_port)
    try:
        yield controller, agent
    finally:
        agent.kill()
        agent.notify.close()
        controller.close()
