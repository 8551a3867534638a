"""Hot swap under steady load: failed requests and tail latency while swapping, against steady state.

The agent's inference server runs in this process (as in the agent, where the update engine swaps
models in-process), serving the digits MLP. `wrk` (C, from Debian) keeps N connections busy with
binary-tensor requests:

    steady  wrk for D/2 s, no swaps
    swaps   wrk for D s while this process loads a fresh session from the model file and swaps it
            in, `--swaps` times spread over the run (load, warm-up, switch, drain, close)
    steady  wrk for D/2 s again (the steady p99 is the mean of the two, so drift cancels out)

Headline (last line, one JSON object): failed (non-2xx answers + socket errors during swaps, goal
0), requests, swaps, p99_ratio = p99 during swaps / steady p99 (goal <= 1.5).

    .venv/bin/python bench/swap.py [--quick] [--swaps N] [--duration-s D] [--connections N]
Needs `wrk` on PATH (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serving import binary_body, run_wrk  # noqa: E402

from agent.runtime import RuntimeOptions, loader_for  # noqa: E402
from agent.server.background import BackgroundServer  # noqa: E402
from agent.server.batching import BatchingConfig  # noqa: E402
from agent.server.http import ServerConfig  # noqa: E402
from controller.sample_models import build_digits_cnn, train_digits_mlp  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (under 60 s)")
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--duration-s", type=float, default=None, help="length of the swap phase")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of each session")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    duration_s = args.duration_s or (8.0 if args.quick else 30.0)
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        workdir = Path(tmp)
        sample = train_digits_mlp(workdir / "m") if args.model == "mlp" else build_digits_cnn(workdir / "m")
        options = RuntimeOptions(intra_op_threads=args.threads)
        loader = loader_for("onnxruntime")
        server = BackgroundServer(ServerConfig(port=0, batching=BatchingConfig(max_batch_size=32))).start()
        assert server.models is not None
        models = server.models
        try:
            server.call(models.swap("m", loader.load(sample.path, options), "0", "ort-fp32"))
            body, headers = binary_body(sample.input_name, sample.golden.inputs[:1])
            url = server.url + "/v2/models/m/infer"
            run_wrk(url, body, headers, args.connections, 1, workdir)  # warm the connection path

            steady = [run_wrk(url, body, headers, args.connections, duration_s / 2, workdir)]
            swapping: dict[str, Any] = {}
            load = threading.Thread(target=lambda: swapping.update(
                run_wrk(url, body, headers, args.connections, duration_s, workdir)))
            started = time.monotonic()
            load.start()
            swap_s: list[float] = []
            time.sleep(0.5)  # let the load settle before the first swap
            spacing_s = (duration_s - 1.5) / args.swaps
            for k in range(1, args.swaps + 1):
                t0 = time.monotonic()
                session = loader.load(sample.path, options)
                server.call(models.swap("m", session, str(k), "ort-fp32"))
                swap_s.append(time.monotonic() - t0)
                time.sleep(max(0.0, started + 0.5 + k * spacing_s - time.monotonic()))
            load.join()
            steady.append(run_wrk(url, body, headers, args.connections, duration_s / 2, workdir))
            stats = models.model("m").describe()
        finally:
            server.stop()
    p99_steady = sum(s["p99_us"] for s in steady) / len(steady)
    failed = swapping["socket_errors"] + swapping["non2xx"]
    figures = {
        "failed": failed,
        "requests": swapping["requests"],
        "swaps": len(swap_s),
        "p99_ratio": swapping["p99_us"] / p99_steady,
        "p99_swaps_us": swapping["p99_us"],
        "p99_steady_us": p99_steady,
        "p50_swaps_us": swapping["p50_us"],
        "p50_steady_us": sum(s["p50_us"] for s in steady) / len(steady),
        "req_s_swaps": swapping["req_s"],
        "req_s_steady": sum(s["req_s"] for s in steady) / len(steady),
        "swap_s_median": sorted(swap_s)[len(swap_s) // 2],
        "steady_failed": sum(s["socket_errors"] + s["non2xx"] for s in steady),
        "connections": args.connections,
        "model": args.model,
    }
    print(f"model {args.model}, {args.connections} connections, {args.threads} intra-op thread(s); "
          f"server reports {stats['swaps']} swaps")
    for label, r in (("steady (before)", steady[0]), ("during swaps", swapping), ("steady (after)", steady[1])):
        print(f"  {label:16s} {r['requests']:7d} requests  {r['req_s']:8.1f} /s  p50 {r['p50_us']:6d} µs  "
              f"p99 {r['p99_us']:6d} µs  failed {r['socket_errors'] + r['non2xx']}")
    print(f"  {len(swap_s)} swaps, median {1e3 * figures['swap_s_median']:.1f} ms each (load + warm + switch + drain)")
    print(f"failed during swaps {failed} (goal 0); p99 during swaps / steady {figures['p99_ratio']:.2f} (goal <= 1.5)")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
