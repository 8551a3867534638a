"""Telemetry ingest throughput: devices → Mosquitto → controller ingest → PostgreSQL, vs a raw subscriber.

K simulated devices' telemetry batches (one 10-second point each: system figures, one model with a
latency histogram of ~15 buckets, ≈1 KB) are published QoS 1 through a local Mosquitto, twice:

1. to a raw paho subscriber (QoS 1) that only counts messages: the broker + Python client ceiling;
2. to the controller's `TelemetryService` (shared subscription, validation, dedupe, grouped inserts into
   PostgreSQL), timed until the last batch is committed.

Both rates are messages / (first publish → last message received or committed), over the same
payloads; the ratio is what the controller's work costs against just receiving (goal ≥ 0.5).
The devices publish from a separate process; publisher, broker, subscriber and PostgreSQL share this
machine's cores.

    .venv/bin/python bench/ingest.py [--quick] [--devices K] [--batches-per-device N]

Last line: one JSON object with `msgs_per_s`, `raw_msgs_per_s`, `ratio_vs_raw`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.metrics.histogram import LatencyHistogram  # noqa: E402
from agent.telemetry.wire import ModelSample, Point, SystemSample, TelemetryBatch, encode  # noqa: E402

MAX_QUEUED = 1_000_000


def payloads(devices: int, per_device: int, seed: int = 1) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    start = time.time() - per_device * 10
    for seq in range(per_device):
        for d in range(devices):
            h = LatencyHistogram()
            for _ in range(40):
                h.record(rng.lognormvariate(-4.0, 0.4))
            point = Point(start + seq * 10, start + seq * 10 + 10, 10,
                          SystemSample(cpu_pct=rng.uniform(5, 60), mem_used_mb=512.0, mem_total_mb=4096.0,
                                       disk_used_pct=40.0, temps_c={"cpu-thermal": rng.uniform(40, 70)}),
                          (ModelSample("digits-cnn", "3", "ort-fp32", 40, 0, h),))
            device = f"dev-{d:05d}"
            batch = TelemetryBatch(device, f"{d:08x}{d:08x}", seq, start + seq * 10 + 10, (point,),
                                   hardware_class="rpi4" if d % 2 else "jetson-orin")
            out.append((f"edgefleet/v1/{device}/telemetry", encode(batch)))
    return out


def _publish(port: int, messages: list[tuple[str, bytes]], clients: int = 2) -> None:
    def run(part: list[tuple[str, bytes]], index: int) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}")
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", port)
        client.loop_start()
        infos = [client.publish(topic, payload, qos=1) for topic, payload in part]
        for info in infos:
            info.wait_for_publish(60)
        client.loop_stop()
        client.disconnect()

    threads = [threading.Thread(target=run, args=(messages[i::clients], i)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def publish_all(port: int, devices: int, per_device: int) -> tuple[float, subprocess.Popen[str]]:
    """The devices publish from their own process (as real devices would, they do not share the
    controller's interpreter); returns the wall-clock time publishing started, and the process (the
    caller waits for it after measuring: its interpreter's exit is no part of the measurement)."""
    proc = subprocess.Popen([sys.executable, __file__, "--publish", str(port), "--devices", str(devices),
                             "--batches-per-device", str(per_device)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return float(proc.stdout.readline()), proc


def raw_rate(port: int, messages: list[tuple[str, bytes]], devices: int, per_device: int) -> float:
    received = [0]
    last = [0.0]
    connected = threading.Event()
    all_in = threading.Event()

    def on_connect(client: mqtt.Client, *args: object) -> None:
        client.subscribe("edgefleet/v1/+/telemetry", qos=1)

    def on_subscribe(*args: object) -> None:
        connected.set()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        received[0] += 1
        last[0] = time.time()
        if received[0] == len(messages):
            all_in.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    started, publisher = publish_all(port, devices, per_device)
    all_in.wait(120)
    publisher.wait(60)
    client.loop_stop()
    client.disconnect()
    return received[0] / (last[0] - started)


def controller_rate(port: int, db_url: str, messages: list[tuple[str, bytes]], devices: int,
                    per_device: int) -> tuple[float, dict[str, int]]:
    from controller.db import make_engine, make_session_factory
    from controller.db import migrate as db_migrate
    from controller.telemetry import IngestConfig, TelemetryService

    engine = make_engine(db_url)
    db_migrate.upgrade(engine)
    service = TelemetryService(make_session_factory(engine), IngestConfig("127.0.0.1", port))
    service.start()
    try:
        started, publisher = publish_all(port, devices, per_device)
        last_progress, seen = time.time(), -1
        while service.writer.stats["batches"] < len(messages) and time.time() - last_progress < 30:
            if service.writer.stats["batches"] != seen:
                seen, last_progress = service.writer.stats["batches"], time.time()
            time.sleep(0.01)
        publisher.wait(60)
        elapsed = last_progress - started
        stats = dict(service.stats())
    finally:
        service.stop()
        engine.dispose()
    return stats.get("writer_batches", 0) / elapsed, stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--batches-per-device", type=int, default=None)
    parser.add_argument("--publish", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        batches = payloads(args.devices, args.batches_per_device)
        print(time.time(), flush=True)
        _publish(args.publish, batches)
        return
    devices = args.devices or (100 if args.quick else 500)
    per_device = args.batches_per_device or (20 if args.quick else 40)

    import ctypes  # noqa: F401  (imported here: the services' pre-exec hook runs as another user and

    #                               cannot import it from a root-only Python installation)
    from tests.service_stores import Postgres, PostgresTemplate
    from tests.services import Mosquitto

    messages = payloads(devices, per_device)
    size = sum(len(p) for _, p in messages) / len(messages)
    print(f"{len(messages)} telemetry batches from {devices} devices, {size:.0f} bytes each on average")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # PostgreSQL runs as its own unprivileged user and starts in its log folder
        template = PostgresTemplate.build(work / "pg-template")
        pg = Postgres(work / "pg", template)
        # Mosquitto queues at most 1000 QoS 1 messages per subscriber by default and drops the rest
        # silently; a controller subscriber needs a deeper queue to absorb bursts (see the report line).
        broker = Mosquitto(work / "mosquitto", extra_conf=f"max_queued_messages {MAX_QUEUED}")
        pg.start()
        broker.start()
        try:
            raw = raw_rate(broker.port, messages, devices, per_device)
            print(f"raw paho subscriber:             {raw:8.0f} msg/s")
            rate, stats = controller_rate(broker.port, pg.url, messages, devices, per_device)
            print(f"controller ingest -> PostgreSQL: {rate:8.0f} msg/s  (stored {stats.get('writer_batches', 0)}, "
                  f"rejected {stats.get('subscriber_rejected', 0)}, duplicates {stats.get('subscriber_duplicates', 0)})")
        finally:
            broker.close()
            pg.close()
            template.remove()
    ratio = rate / raw
    print(f"ratio vs raw: {ratio:.2f} (goal >= 0.5)")
    print(json.dumps({"msgs_per_s": round(rate), "raw_msgs_per_s": round(raw), "ratio_vs_raw": round(ratio, 3),
                      "messages": len(messages), "devices": devices}))


if __name__ == "__main__":
    main()
