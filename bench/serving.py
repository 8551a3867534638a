"""Serving throughput and latency against a bare runtime loop and a naive server, in the same run.

    (a) bare:   ONNX Runtime in this process, batch 1 in a loop, the same thread settings
    (b) agent:  `edgefleet-agent serve` (its own process), binary tensors, dynamic batching, with
                the device defaults (one worker per CPU, CPUs shared out as intra-op threads: the
                same CPU budget as (a)); for the CNN also the latency-first setting (one worker
                with every CPU as an intra-op thread, exactly (a)'s session settings)
    (c) naive:  FastAPI + uvicorn with JSON lists, written the way a typical user would

(b) and (c) are driven by `wrk` (C, from Debian) with a Lua script for the body, so the load
generator does not take the server's CPU the way a Python client would; wrk's own CPU share of
the machine is printed. Models: a MobileNetV2-shaped CNN at 224x224 (random weights) and the
digits MLP. Both servers stay up and (a), (b), (c) are measured in turn, round after round; each
figure is the median over the rounds, so drift on a shared machine hits them alike.

Headline (last line, one JSON object): cnn_ratio_vs_bare = (b)/(a) and cnn_ratio_vs_naive =
(b)/(c) in images/s at 16 connections; mlp_p50_overhead_us = p50 of (b) at one connection minus
the bare call.

    .venv/bin/python bench/serving.py [--quick] [--duration-s S] [--connections N]
Needs `wrk` on PATH (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.runtime import RuntimeOptions, loader_for  # noqa: E402
from agent.server.batching import default_workers, threads_per_worker  # noqa: E402
from controller.sample_models import build_mobilenet_like, train_digits_mlp  # noqa: E402

NAIVE_SERVER = r'''
import os
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ["THREADS"])
session = ort.InferenceSession(os.environ["MODEL"], options, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
app = FastAPI()


class PredictRequest(BaseModel):
    data: list


@app.post("/predict")
def predict(request: PredictRequest):
    x = np.array(request.data, dtype=np.float32)
    outputs = session.run(None, {input_name: x})
    return {"outputs": outputs[0].tolist()}
'''

WRK_LUA = r'''
local f = io.open("%(body)s", "rb")
wrk.body = f:read("*all")
f:close()
wrk.method = "POST"
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "socket_errors": %%d, "non2xx": %%d, ' ..
    '"p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "mean_us": %%f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, timeout_s: float = 120.0, exited: Any = lambda: None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            if exited() is not None:
                raise RuntimeError(f"server for port {port} exited") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"server on port {port} did not answer {path} within {timeout_s} s") from None
            time.sleep(0.1)


def run_wrk(url: str, body: bytes, headers: dict[str, str], connections: int, duration_s: float,
            workdir: Path) -> dict[str, Any]:
    """One wrk run; returns its figures plus wrk's CPU share of the whole machine."""
    body_path = workdir / f"body-{len(body)}-{abs(hash(tuple(headers.items())))}.bin"
    body_path.write_bytes(body)
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    lua = workdir / "wrk.lua"
    lua.write_text(WRK_LUA % {"body": body_path, "headers": header_lines})
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "30s",
           "-s", str(lua), url]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.monotonic() - started
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-2000:]}")
    figures: dict[str, Any] = json.loads(line[len("WRKJSON "):])
    figures["req_s"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["client_cpu_share"] = (usage.ru_utime + usage.ru_stime) / (wall_s * (os.cpu_count() or 1))
    return figures


def bare_loop(model: Path, x: np.ndarray, threads: int, duration_s: float) -> dict[str, float]:
    session = loader_for("onnxruntime").load(model, RuntimeOptions(intra_op_threads=threads))
    name = session.inputs[0].name
    for _ in range(5):
        session.run({name: x})
    times = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline or len(times) < 20:
        t0 = time.perf_counter()
        session.run({name: x})
        times.append(time.perf_counter() - t0)
    session.close()
    return {"per_s": len(times) / sum(times), "p50_us": statistics.median(times) * 1e6}


def binary_body(input_name: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + x.tobytes(), {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(header))}


class Server:
    """A server subprocess on a free port; stopped with SIGTERM."""

    def __init__(self, cmd: list[str], port: int, ready_path: str, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=ROOT)
        try:
            wait_http(port, ready_path, exited=self.proc.poll)
        except RuntimeError as e:
            self.stop()
            self.log.seek(0)
            output = self.log.read()[-2000:].decode(errors="replace")
            self.log.close()
            raise RuntimeError(f"{e}; server output: {output}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.log.close()


def agent_server(model: Path, threads: int, max_batch: int, workers: int = 1) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "agent.cli", "serve", str(model), "--name", "m", "--port", str(port),
           "--threads", str(threads), "--max-batch-size", str(max_batch), "--workers", str(workers),
           "--log-level", "WARNING"]
    return Server(cmd, port, "/v2/models/m/ready")


def naive_server(model: Path, threads: int, workdir: Path) -> Server:
    (workdir / "naive_app.py").write_text(NAIVE_SERVER)
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "naive_app:app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--app-dir", str(workdir)]
    return Server(cmd, port, "/docs", env={"MODEL": str(model), "THREADS": str(threads)})


def measure_model(label: str, model: Path, x: np.ndarray, threads: int, args: argparse.Namespace,
                  workdir: Path, connections: list[int], agents: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """(a), each agent configuration and (c), interleaved round by round with all servers up.

    `agents` maps a label to (workers, intra-op threads per worker). On a shared machine the
    background load changes from second to second; measuring everything in turn, several times,
    and taking medians lets the load hit all of them alike instead of one of them.
    """
    d = args.duration_s
    body, headers = binary_body("input", x)
    naive_body = json.dumps({"data": x.tolist()}).encode()
    servers: dict[str, Server] = {}
    rounds: list[dict[str, Any]] = []
    try:
        for name, (workers, agent_threads) in agents.items():
            servers[name] = agent_server(model, agent_threads, args.max_batch_size, workers)
        servers["naive"] = naive_server(model, threads, workdir)
        targets = {name: (f"http://127.0.0.1:{srv.port}/v2/models/m/infer", body, headers)
                   for name, srv in servers.items() if name != "naive"}
        targets["naive"] = (f"http://127.0.0.1:{servers['naive'].port}/predict", naive_body,
                            {"Content-Type": "application/json"})
        for c in connections:  # warm every server's connection path and session
            for url, b, h in targets.values():
                run_wrk(url, b, h, c, 1, workdir)
        for _ in range(args.rounds):
            r: dict[str, Any] = {"bare": bare_loop(model, x, threads, d / 2)}
            for c in connections:
                for name, (url, b, h) in targets.items():
                    r[f"{name}_c{c}"] = run_wrk(url, b, h, c, d, workdir)
            rounds.append(r)
    finally:
        for srv in servers.values():
            srv.close()

    def median(key: str, field: str) -> float:
        return float(statistics.median(r[key][field] for r in rounds))

    result: dict[str, Any] = {"threads": threads, "rounds": len(rounds)}
    result["bare"] = {"per_s": median("bare", "per_s"), "p50_us": median("bare", "p50_us"),
                      "per_s_rounds": [round(r["bare"]["per_s"], 1) for r in rounds]}
    for key in rounds[0]:
        if key == "bare":
            continue
        result[key] = {f: median(key, f) for f in ("req_s", "p50_us", "p99_us", "client_cpu_share")}
        result[key]["errors"] = sum(r[key]["socket_errors"] + r[key]["non2xx"] for r in rounds)
        result[key]["req_s_rounds"] = [round(r[key]["req_s"], 1) for r in rounds]
    print(f"\n{label}: input {list(x.shape)}, {len(body)} B binary / {len(naive_body)} B JSON; "
          f"bare and naive with {threads} intra-op thread(s); median of {len(rounds)} interleaved rounds")
    print(f"  (a) bare ORT batch 1                         {result['bare']['per_s']:9.1f} /s   "
          f"p50 {result['bare']['p50_us']:8.1f} µs   rounds {result['bare']['per_s_rounds']}")
    for c in connections:
        for name in [*agents, "naive"]:
            m = result[f"{name}_c{c}"]
            title = ("(c) naive FastAPI JSON" if name == "naive" else
                     f"(b) {name} binary {agents[name][0]}x{agents[name][1]}")
            print(f"  {title:38s} c={c:<3d}{m['req_s']:9.1f} /s   p50 {m['p50_us']:8.0f} µs   "
                  f"p99 {m['p99_us']:8.0f} µs   errors {m['errors']}   wrk CPU {100 * m['client_cpu_share']:.1f} %   "
                  f"rounds {m['req_s_rounds']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (under 60 s in all)")
    parser.add_argument("--duration-s", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2, quick 1)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--cnn-threads", type=int, default=None, help="default: the CPUs this process may use")
    parser.add_argument("--mlp-threads", type=int, default=1)

    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    args.duration_s = args.duration_s or (2.0 if args.quick else 8.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    cnn_threads = args.cnn_threads or RuntimeOptions().resolved_intra_op_threads()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        workdir = Path(tmp)
        cnn = build_mobilenet_like(workdir / "cnn" / "model.onnx")
        mlp = train_digits_mlp(workdir / "mlp")
        x_cnn = cnn.golden.inputs[:1].astype(np.float32)
        x_mlp = mlp.golden.inputs[:1].astype(np.float32)
        load = os.getloadavg()[0]
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start; wrk -t1; "
              f"runs of {args.duration_s:.0f} s")
        workers = default_workers()
        # the agent's device default (workers x threads_per_worker), and the latency-first setting
        cnn_agents = {"agent": (workers, threads_per_worker(workers)), "agent_latency_first": (1, cnn_threads)}
        cnn_result = measure_model("MobileNetV2-like CNN 224x224", cnn.path, x_cnn, cnn_threads, args, workdir,
                                   [args.connections], cnn_agents)
        mlp_result = measure_model("digits MLP 64-128-10", mlp.path, x_mlp, args.mlp_threads, args, workdir,
                                   [1, args.connections], {"agent": (workers, args.mlp_threads)})
    c = args.connections
    figures = {
        "cnn_ratio_vs_bare": cnn_result[f"agent_c{c}"]["req_s"] / cnn_result["bare"]["per_s"],
        "cnn_ratio_vs_naive": cnn_result[f"agent_c{c}"]["req_s"] / cnn_result[f"naive_c{c}"]["req_s"],
        "cnn_latency_first_ratio_vs_bare": cnn_result[f"agent_latency_first_c{c}"]["req_s"] / cnn_result["bare"]["per_s"],
        # the same ratio inside each round (measured seconds apart, so less exposed to drift)
        "cnn_ratio_vs_bare_rounds": [round(a / b, 3) for a, b in zip(
            cnn_result[f"agent_c{c}"]["req_s_rounds"], cnn_result["bare"]["per_s_rounds"], strict=True)],
        "mlp_p50_overhead_us": mlp_result["agent_c1"]["p50_us"] - mlp_result["bare"]["p50_us"],
        "cnn_bare_per_s": cnn_result["bare"]["per_s"],
        "cnn_agent_per_s": cnn_result[f"agent_c{c}"]["req_s"],
        "cnn_naive_per_s": cnn_result[f"naive_c{c}"]["req_s"],
        "mlp_bare_call_us": mlp_result["bare"]["p50_us"],
        "mlp_agent_p50_us_c1": mlp_result["agent_c1"]["p50_us"],
        "mlp_naive_p50_us_c1": mlp_result["naive_c1"]["p50_us"],
        "mlp_agent_per_s": mlp_result[f"agent_c{c}"]["req_s"],
        "mlp_naive_per_s": mlp_result[f"naive_c{c}"]["req_s"],
        "client_cpu_share_max": max(r["client_cpu_share"] for res in (cnn_result, mlp_result)
                                    for k, r in res.items() if k.startswith(("agent_", "naive_"))),
        "errors": sum(r["errors"] for res in (cnn_result, mlp_result)
                      for k, r in res.items() if k.startswith(("agent_", "naive_"))),
        "rounds": args.rounds,
        "connections": c,
        "cnn_threads": cnn_threads,
        "agent_workers": workers,
        "cnn_agent_threads_per_worker": threads_per_worker(workers),
        "mlp_threads": args.mlp_threads,
    }
    print(f"\nCNN: agent/bare {figures['cnn_ratio_vs_bare']:.2f}x (goal >= 1.0), agent/naive "
          f"{figures['cnn_ratio_vs_naive']:.1f}x (goal >= 5); MLP p50 overhead at one connection "
          f"{figures['mlp_p50_overhead_us']:.0f} µs (goal <= 200)")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
