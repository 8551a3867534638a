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
digits MLP. All servers stay up and (a), (b), (c) are measured in turn, round after round (the
bare loop before and after the servers in each round); ratios are taken inside each round and
each headline is the median of the per-round figures, printed with their quartiles and extremes,
so drift on a shared machine hits both sides of a ratio alike. Each server's CPU time per
request (from /proc) and the agent's batch sizes (from its stats endpoint) are printed too.

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
    cpu_start_s = time.process_time()  # every thread of this process: the runtime's own threads included
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline or len(times) < 20:
        t0 = time.perf_counter()
        session.run({name: x})
        times.append(time.perf_counter() - t0)
    cpu_s = time.process_time() - cpu_start_s
    session.close()
    return {"per_s": len(times) / sum(times), "p50_us": statistics.median(times) * 1e6,
            "cpu_us_per_call": cpu_s / len(times) * 1e6}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_rows(port: int) -> dict[int, int]:
    """The agent's batches by row count so far (its stats endpoint)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/edgefleet/models/m/stats", timeout=10) as r:
        doc = json.load(r)
    return {int(k): int(v) for k, v in doc["current"]["stats"].get("batch_rows", {}).items()}


def measure_server(srv: Server, url: str, body: bytes, headers: dict[str, str], connections: int,
                   duration_s: float, workdir: Path, agent: bool) -> dict[str, Any]:
    """One wrk run against `srv`, plus the server's CPU per request and (agent) the batches it formed."""
    before = batch_rows(srv.port) if agent else {}
    cpu_before_s = process_cpu_s(srv.proc.pid)
    figures = run_wrk(url, body, headers, connections, duration_s, workdir)
    cpu_s = process_cpu_s(srv.proc.pid) - cpu_before_s
    figures["server_cpu_us_per_req"] = cpu_s / max(1, figures["requests"]) * 1e6
    if agent:
        after = batch_rows(srv.port)
        figures["batch_rows"] = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    return figures


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


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and extremes of per-round figures: how far one round can be trusted."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"median": statistics.median(ordered), "q1": q1, "q3": q3, "min": ordered[0], "max": ordered[-1]}


def measure_model(label: str, model: Path, x: np.ndarray, threads: int, args: argparse.Namespace,
                  workdir: Path, connections: list[int], agents: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """(a), each agent configuration and (c), interleaved round by round with all servers up.

    `agents` maps a label to (workers, intra-op threads per worker). On a shared machine the
    background load changes from second to second, so every round measures the bare loop before
    and after the servers (their mean is that round's baseline) and the servers in a rotating
    order; ratios are taken inside each round and the figure is the median of the per-round
    ratios, with the quartiles and extremes beside it. CPU time per request (from /proc) is
    reported too: it moves much less with the machine's load than throughput does.
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
        names = list(targets)
        for i in range(args.rounds):
            before = bare_loop(model, x, threads, d / 2)
            r: dict[str, Any] = {}
            for c in connections:
                for name in names[i % len(names):] + names[:i % len(names)]:
                    url, b, h = targets[name]
                    r[f"{name}_c{c}"] = measure_server(servers[name], url, b, h, c, d, workdir, name != "naive")
            after = bare_loop(model, x, threads, d / 2)
            r["bare"] = {k: (before[k] + after[k]) / 2 for k in before}
            rounds.append(r)
    finally:
        for srv in servers.values():
            srv.close()

    def median(key: str, field: str) -> float:
        return float(statistics.median(r[key][field] for r in rounds))

    result: dict[str, Any] = {"threads": threads, "rounds": len(rounds), "per_round": rounds}
    result["bare"] = {f: median("bare", f) for f in ("per_s", "p50_us", "cpu_us_per_call")}
    result["bare"]["per_s_rounds"] = [round(r["bare"]["per_s"], 1) for r in rounds]
    for key in rounds[0]:
        if key == "bare":
            continue
        result[key] = {f: median(key, f) for f in ("req_s", "p50_us", "p99_us", "client_cpu_share",
                                                   "server_cpu_us_per_req")}
        result[key]["errors"] = sum(r[key]["socket_errors"] + r[key]["non2xx"] for r in rounds)
        result[key]["req_s_rounds"] = [round(r[key]["req_s"], 1) for r in rounds]
        if "batch_rows" in rounds[0][key]:
            histogram: dict[int, int] = {}
            for r in rounds:
                for rows, n in r[key]["batch_rows"].items():
                    histogram[rows] = histogram.get(rows, 0) + n
            result[key]["batch_rows"] = dict(sorted(histogram.items()))
            result[key]["mean_batch_rows"] = (sum(k * n for k, n in histogram.items())
                                              / max(1, sum(histogram.values())))
    print(f"\n{label}: input {list(x.shape)}, {len(body)} B binary / {len(naive_body)} B JSON; "
          f"bare and naive with {threads} intra-op thread(s); medians of {len(rounds)} interleaved rounds")
    print(f"  (a) bare ORT batch 1                         {result['bare']['per_s']:9.1f} /s   "
          f"p50 {result['bare']['p50_us']:8.1f} µs   CPU/call {result['bare']['cpu_us_per_call']:8.1f} µs   "
          f"rounds {result['bare']['per_s_rounds']}")
    for c in connections:
        for name in [*agents, "naive"]:
            m = result[f"{name}_c{c}"]
            title = ("(c) naive FastAPI JSON" if name == "naive" else
                     f"(b) {name} binary {agents[name][0]}x{agents[name][1]}")
            print(f"  {title:38s} c={c:<3d}{m['req_s']:9.1f} /s   p50 {m['p50_us']:8.0f} µs   "
                  f"p99 {m['p99_us']:8.0f} µs   CPU/req {m['server_cpu_us_per_req']:8.1f} µs   errors {m['errors']}   "
                  f"wrk CPU {100 * m['client_cpu_share']:.1f} %   rounds {m['req_s_rounds']}")
            if "batch_rows" in m:
                print(f"      batches by rows {m['batch_rows']} (mean {m['mean_batch_rows']:.1f})")
    return result


def round_ratios(result: dict[str, Any], key: str, field: str = "req_s") -> list[float]:
    """`key`'s throughput over the bare loop's, inside each round."""
    return [r[key][field] / r["bare"]["per_s"] for r in result["per_round"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (under 60 s in all)")
    parser.add_argument("--duration-s", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, quick 1)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--cnn-threads", type=int, default=None, help="default: the CPUs this process may use")
    parser.add_argument("--mlp-threads", type=int, default=1)

    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    args.duration_s = args.duration_s or (2.0 if args.quick else 4.0)
    args.rounds = args.rounds or (1 if args.quick else 7)
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
    cnn_vs_bare = spread(round_ratios(cnn_result, f"agent_c{c}"))
    cnn_vs_naive = spread([r[f"agent_c{c}"]["req_s"] / r[f"naive_c{c}"]["req_s"] for r in cnn_result["per_round"]])
    mlp_overhead = spread([r["agent_c1"]["p50_us"] - r["bare"]["p50_us"] for r in mlp_result["per_round"]])
    figures = {
        # medians of the per-round figures (each round's ratio is taken seconds apart, so drift in
        # the machine's load hits both sides of it alike)
        "cnn_ratio_vs_bare": cnn_vs_bare["median"],
        "cnn_ratio_vs_naive": cnn_vs_naive["median"],
        "mlp_p50_overhead_us": mlp_overhead["median"],
        "cnn_ratio_vs_bare_spread": cnn_vs_bare,
        "cnn_ratio_vs_naive_spread": cnn_vs_naive,
        "mlp_p50_overhead_us_spread": mlp_overhead,
        "cnn_latency_first_ratio_vs_bare": statistics.median(round_ratios(cnn_result, f"agent_latency_first_c{c}")),
        "cnn_ratio_vs_bare_rounds": [round(v, 3) for v in round_ratios(cnn_result, f"agent_c{c}")],
        # CPU per image: agent (whole server process) vs the bare loop; < 1 means serving costs less CPU
        "cnn_cpu_ratio_agent_vs_bare": (cnn_result[f"agent_c{c}"]["server_cpu_us_per_req"]
                                        / cnn_result["bare"]["cpu_us_per_call"]),
        "cnn_mean_batch_rows": cnn_result[f"agent_c{c}"]["mean_batch_rows"],
        "cnn_bare_per_s": cnn_result["bare"]["per_s"],
        "cnn_agent_per_s": cnn_result[f"agent_c{c}"]["req_s"],
        "cnn_naive_per_s": cnn_result[f"naive_c{c}"]["req_s"],
        "mlp_bare_call_us": mlp_result["bare"]["p50_us"],
        "mlp_agent_p50_us_c1": mlp_result["agent_c1"]["p50_us"],
        "mlp_naive_p50_us_c1": mlp_result["naive_c1"]["p50_us"],
        "mlp_agent_cpu_us_per_req_c1": mlp_result["agent_c1"]["server_cpu_us_per_req"],
        f"mlp_agent_cpu_us_per_req_c{c}": mlp_result[f"agent_c{c}"]["server_cpu_us_per_req"],
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
        "load_average_start": load,
    }
    print(f"\nCNN: agent/bare {figures['cnn_ratio_vs_bare']:.2f}x (goal >= 1.0; rounds "
          f"{cnn_vs_bare['min']:.2f}..{cnn_vs_bare['max']:.2f}), agent/naive {figures['cnn_ratio_vs_naive']:.1f}x "
          f"(goal >= 5); MLP p50 overhead at one connection {figures['mlp_p50_overhead_us']:.0f} µs "
          f"(goal <= 200; rounds {mlp_overhead['min']:.0f}..{mlp_overhead['max']:.0f})")

    def rounded(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        return round(v, 4) if isinstance(v, float) else v

    print(json.dumps(rounded(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
