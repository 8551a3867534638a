"""Agent footprint: RSS and CPU idle without a model, RSS serving the digits CNN, vs a bare ORT process.

Three child processes, measured one after the other by this process with psutil (RSS sampled every
0.5 s, the maximum reported; CPU from the child's own CPU times over the window):

- `agent-idle`: what the daemon runs with no model — `AgentSession` connected to a local Mosquitto
  and the `TelemetryLoop` (psutil + sysfs, 10 s samples, batches every 30 s). It imports the same agent
  modules the daemon does for these parts, not the daemon itself (which also needs enrollment and a
  controller); numpy and the runtimes are not imported, as in the daemon before a model is active.
  Controller-only packages (boto3, …) are blocked in every child, as they are absent on a device.
- `agent-serving`: the same plus the inference server (`agent.server.background`) with the digits CNN
  loaded through `agent.runtime.loader_for("onnxruntime")`, `/metrics` mounted, telemetry reading its
  counters; this process sends requests to it for the window.
- `bare`: a plain Python process holding one ONNX Runtime session of the same model, answering the
  same request rate from a loop (no HTTP), i.e. the least any process serving the model could use.

Goals (issue 7): idle ≤ 45 MB RSS and ≤ 0.5 % of a core; serving ≤ 35 MB above the bare process.
Last line: one JSON object with `idle_rss_mb`, `idle_cpu_pct`, `model_rss_mb`, `bare_model_rss_mb`.

    .venv/bin/python bench/footprint.py [--quick] [--window-s 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REQUEST_RATE_HZ = 20.0


# Not installed on a device (`pip install edgefleet[agent]`): blocked in the children so that an
# optional import elsewhere (securesystemslib tries boto3 for its cloud signers) costs here what it
# costs on a device, i.e. nothing. tests/test_agent_imports.py blocks the same packages.
CONTROLLER_ONLY = ("fastapi", "boto3", "botocore", "sqlalchemy", "alembic", "uvicorn", "sklearn", "skl2onnx",
                   "typer", "rich", "onnx", "s3transfer", "psycopg")


def _block_controller_packages() -> None:
    import importlib.abc

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name.split(".")[0] in CONTROLLER_ONLY:
                raise ModuleNotFoundError(f"{name} is not installed on a device")

    sys.meta_path.insert(0, Block())


def child(role: str, workdir: Path, mqtt_port: int, model_path: str) -> None:
    """Runs in the measured process; prints `ready [url]` once set up, then serves until killed."""
    _block_controller_packages()
    from agent.mqtt import AgentSession, Outbox, SessionConfig
    from agent.telemetry import SessionChannel, SystemSampler, TelemetryConfig, TelemetryLoop, TelemetrySpool

    if role == "bare":
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()  # the same threads as the agent's session below
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        x = np.zeros((1, 1, 8, 8), np.float32)
        print("ready", flush=True)
        while True:
            session.run(None, {name: x})
            time.sleep(1 / REQUEST_RATE_HZ)

    class Refuse:
        def receive_assignment(self, payload: bytes) -> None:
            raise ValueError("no assignments in this benchmark")

    session_ = AgentSession(SessionConfig("127.0.0.1", mqtt_port, "bench-dev"), Outbox(workdir / "outbox"), Refuse())
    session_.start()
    system = SystemSampler()
    models = None
    url = ""
    if role == "agent-serving":
        from agent.runtime import RuntimeOptions, loader_for
        from agent.server.background import BackgroundServer
        from agent.server.http import ServerConfig
        from agent.telemetry.prometheus import ServerModelMetrics

        server = BackgroundServer(ServerConfig(port=0)).start()
        assert server.models is not None
        loaded = loader_for("onnxruntime").load(Path(model_path), RuntimeOptions(intra_op_threads=1, inter_op_threads=1))
        server.call(server.models.swap("digits-cnn", loaded, "1", "ort-fp32"))
        models = ServerModelMetrics(server.models, server.loop)
        url = server.url
    loop = TelemetryLoop(TelemetryConfig("bench-dev", sample_every_s=10, batch_every_s=30),
                         TelemetrySpool(workdir / "telemetry"), SessionChannel(session_), system, models)
    loop.start()
    print("ready", url, flush=True)
    while True:
        time.sleep(3600)


def measure(role: str, workdir: Path, mqtt_port: int, model_path: str, window_s: float) -> dict[str, float]:
    import psutil

    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", role, "--workdir", str(workdir / role), "--mqtt-port", str(mqtt_port),
         "--model", model_path], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"{role} child did not start: {line}")
        url = line[1] if len(line) > 1 else ""
        ps = psutil.Process(proc.pid)
        time.sleep(min(5.0, window_s / 4))  # settle: imports done, first telemetry sample taken
        cpu0, t0 = sum(ps.cpu_times()[:2]), time.monotonic()
        peak_rss = 0
        next_request = time.monotonic()
        sent = 0
        body = None
        if url:
            import urllib.request

            body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                           "data": [0.0] * 64}]}).encode()
        while time.monotonic() - t0 < window_s:
            peak_rss = max(peak_rss, ps.memory_info().rss)
            if body is not None:
                while time.monotonic() >= next_request:
                    request = urllib.request.Request(f"{url}/v2/models/digits-cnn/infer", data=body,
                                                     headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
                        response.read()
                    sent += 1
                    next_request += 1 / REQUEST_RATE_HZ
            time.sleep(0.05 if body is not None else 0.5)
        cpu_pct = 100.0 * (sum(ps.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)
        return {"rss_mb": round(peak_rss / 1e6, 1), "cpu_pct": round(cpu_pct, 3), "requests": sent}
    finally:
        proc.kill()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="15 s windows (the goals are for 60 s)")
    parser.add_argument("--window-s", type=float, default=None)
    parser.add_argument("--child", default=None)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--mqtt-port", type=int)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir, args.mqtt_port, args.model)
        return
    window_s = args.window_s or (15.0 if args.quick else 60.0)

    from controller.sample_models import build_digits_cnn
    from tests.services import Mosquitto

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = build_digits_cnn(workdir / "model")
        broker = Mosquitto(workdir / "mosquitto")
        broker.start()
        try:
            idle = measure("agent-idle", workdir, broker.port, str(model.path), window_s)
            print(f"agent idle, no model:        RSS {idle['rss_mb']:6.1f} MB   CPU {idle['cpu_pct']:.3f} % of a core")
            serving = measure("agent-serving", workdir, broker.port, str(model.path), window_s)
            print(f"agent serving digits CNN:    RSS {serving['rss_mb']:6.1f} MB   CPU {serving['cpu_pct']:.2f} % "
                  f"({serving['requests']} requests at {REQUEST_RATE_HZ:.0f}/s over HTTP)")
            bare = measure("bare", workdir, broker.port, str(model.path), window_s)
            print(f"bare ORT session, same model: RSS {bare['rss_mb']:6.1f} MB   CPU {bare['cpu_pct']:.2f} %")
        finally:
            broker.close()
    over = serving["rss_mb"] - bare["rss_mb"]
    print(f"serving overhead over bare: {over:.1f} MB (goal <= 35); idle goals: <= 45 MB, <= 0.5 % "
          f"-> {'met' if idle['rss_mb'] <= 45 and idle['cpu_pct'] <= 0.5 and over <= 35 else 'NOT met'}")
    print(json.dumps({"idle_rss_mb": idle["rss_mb"], "idle_cpu_pct": idle["cpu_pct"],
                      "model_rss_mb": serving["rss_mb"], "bare_model_rss_mb": bare["rss_mb"],
                      "model_overhead_mb": round(over, 1), "window_s": window_s}))


if __name__ == "__main__":
    main()
