"""`edgefleet-agent serve MODEL --name NAME`: serve one model file with no controller at all.

Useful on its own (a local inference endpoint for an application), for tests and for benchmarks.
The agent's update engine uses the same server in-process; this command only wires a file to it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model file (.onnx; OpenVINO also takes .xml or an IR folder)")
    parser.add_argument("--name", required=True, help="model name on the protocol (/v2/models/NAME)")
    parser.add_argument("--model-version", default="1", help="version reported in responses (default 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="TCP port (default 8000 unless --unix-socket is given; 0 picks a free one)")
    parser.add_argument("--unix-socket", type=Path,
                        help="serve on this Unix socket (TCP too only when --port is also given)")
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime")
    parser.add_argument("--device", default=None, help="runtime device (cpu; OpenVINO: CPU, GPU, NPU, AUTO)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads per worker (default: the CPUs this process may use / workers)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.0,
                        help="how long a short batch may wait for more rows (default 0: batch what queued "
                             "while the previous batch ran)")
    parser.add_argument("--max-queue", type=int, default=256, help="queued requests per model before 429")
    parser.add_argument("--workers", type=int, default=None,
                        help="batches run at the same time (default: one per CPU, at most 4; "
                             "--workers 1 with all CPUs as --threads favours single-request latency)")
    parser.add_argument("--max-body-mb", type=float, default=64.0)
    parser.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="auto: uvloop when installed (less CPU per request), else asyncio's own")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    # Heavy imports (numpy, runtimes, aiohttp) only when the command actually runs.
    from agent.runtime import InferenceRuntimeError, RuntimeOptions, loader_for
    from agent.server import event_loop
    from agent.server.batching import BatchingConfig, default_workers, threads_per_worker
    from agent.server.http import InferenceServer, ServerConfig
    from agent.server.model_server import ModelServer

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("edgefleet.serve")
    try:
        # OpenVINO runs one stream per session (its runs are serialised): one worker, all threads.
        workers = args.workers or (1 if args.runtime == "openvino" else default_workers())
        batching = BatchingConfig(max_batch_size=args.max_batch_size,
                                  max_queue_delay_s=args.max_queue_delay_ms / 1000.0,
                                  max_queue_requests=args.max_queue, workers=workers)
        port = args.port if args.port is not None or args.unix_socket is not None else 8000
        config = ServerConfig(host=args.host, port=port, unix_socket=args.unix_socket,
                              max_body_bytes=int(args.max_body_mb * 1024 * 1024), batching=batching)
        device = args.device or ("CPU" if args.runtime == "openvino" else "cpu")
        options = RuntimeOptions(intra_op_threads=args.threads or threads_per_worker(workers), device=device)
        session = loader_for(args.runtime).load(args.model, options)
    except (ValueError, InferenceRuntimeError) as e:
        log.error("%s", e)
        return 2

    async def main() -> int:
        models = ModelServer(batching, drain_timeout_s=config.drain_timeout_s)
        await models.swap(args.name, session, args.model_version, variant=args.runtime)
        server = InferenceServer(models, config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        try:
            where = [str(config.unix_socket)] if config.unix_socket else []
            where += [server.url] if server.port is not None else []
            print(f"serving {args.name!r} on {' and '.join(where)}", flush=True)
            await stop.wait()
        finally:
            await server.stop()
            await models.close()
        return 0

    try:
        return event_loop.run(main(), args.event_loop)
    except ValueError as e:  # --event-loop uvloop without uvloop installed
        log.error("%s", e)
        return 2
    except OSError as e:
        log.error("cannot serve: %s", e)
        return 1
