"""Telemetry ingest throughput: devices → Mosquitto → controller ingest → PostgreSQL, vs a raw subscriber.

K simulated devices' telemetry batches (one 10-second point each: system figures, one model with a
latency histogram of ~15 buckets, ≈1 KB; a quarter of the devices also carry sample-capture counters)
are published QoS 1 through a local Mosquitto, twice:

1. to a raw paho subscriber (QoS 1) that only counts messages: the broker + Python client ceiling;
2. to the controller's `TelemetryService` (shared subscription, validation, dedupe, grouped inserts into
   PostgreSQL), timed until the last batch is committed.

Both rates are messages / (first publish → last message received or committed), over the same
payloads; the ratio is what the controller's work costs against just receiving (goal ≥ 0.5). The two
are measured back to back in each of R rounds (each round its own outbox streams, the controller a
fresh session) and reported as medians of the per-round figures. Rates on a shared machine swing
with other load; the CPU time of the receiving process per message (`cpu_us_per_msg`, the
controller; `raw_cpu_us_per_msg`, the raw subscriber) is the steadier figure.
The devices publish from a separate process; publisher, broker, subscriber and PostgreSQL share this
machine's cores.

    .venv/bin/python bench/ingest.py [--quick] [--devices K] [--batches-per-device N] [--rounds R]

Last line: one JSON object with `msgs_per_s`, `raw_msgs_per_s`, `ratio_vs_raw`, `cpu_us_per_msg`,
`raw_cpu_us_per_msg`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
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
from agent.telemetry.capture_counts import CaptureCounts  # noqa: E402
from agent.telemetry.wire import ModelSample, Point, SystemSample, TelemetryBatch, encode  # noqa: E402

MAX_QUEUED = 1_000_000


def payloads(devices: int, per_device: int, seed: int = 1, round_: int = 0) -> list[tuple[str, bytes]]:
    """Each round's batches sit in their own outbox stream: a later round is new data, not redelivery."""
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
            # a quarter of the fleet captures samples and reports its capture counters
            capture = (CaptureCounts(since_s=start, captured_random=seq, uploaded=seq, spooled_bytes=1000 * seq,
                                     pending=1) if d % 4 == 0 else None)
            batch = TelemetryBatch(device, f"{round_:08x}{d:08x}", seq, start + seq * 10 + 10, (point,),
                                   hardware_class="rpi4" if d % 2 else "jetson-orin", capture=capture)
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


def publish_all(port: int, devices: int, per_device: int, round_: int) -> tuple[float, subprocess.Popen[str]]:
    """The devices publish from their own process (as real devices would, they do not share the
    controller's interpreter); returns the wall-clock time publishing started, and the process (the
    caller waits for it after measuring: its interpreter's exit is no part of the measurement)."""
    proc = subprocess.Popen([sys.executable, __file__, "--publish", str(port), "--devices", str(devices),
                             "--batches-per-device", str(per_device), "--round", str(round_)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return float(proc.stdout.readline()), proc


def raw_rate(port: int, messages: list[tuple[str, bytes]], devices: int, per_device: int,
             round_: int) -> tuple[float, float]:
    """(messages per second, CPU seconds of this process per message)."""
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
    cpu_s = time.process_time()
    started, publisher = publish_all(port, devices, per_device, round_)
    all_in.wait(120)
    cpu_s = time.process_time() - cpu_s
    publisher.wait(60)
    client.loop_stop()
    client.disconnect()
    return received[0] / (last[0] - started), cpu_s / max(1, received[0])


def controller_rate(port: int, db_url: str, messages: list[tuple[str, bytes]], devices: int,
                    per_device: int, round_: int) -> tuple[float, float, dict[str, int]]:
    """(messages stored per second, CPU seconds of this process per message, the service's counters)."""
    from controller.db import make_engine, make_session_factory
    from controller.db import migrate as db_migrate
    from controller.telemetry import IngestConfig, TelemetryService

    engine = make_engine(db_url)
    db_migrate.upgrade(engine)
    # A session that ends at disconnect: an earlier round's session must not queue (and later replay)
    # the messages of the raw measurement that follows it.
    service = TelemetryService(make_session_factory(engine), IngestConfig(
        "127.0.0.1", port, client_id=f"bench-ingest-{round_}", session_expiry_s=0))
    service.start()
    try:
        cpu_s = time.process_time()
        started, publisher = publish_all(port, devices, per_device, round_)
        last_progress, seen = time.time(), -1
        while service.writer.stats["batches"] < len(messages) and time.time() - last_progress < 30:
            if service.writer.stats["batches"] != seen:
                seen, last_progress = service.writer.stats["batches"], time.time()
            time.sleep(0.01)
        cpu_s = time.process_time() - cpu_s
        publisher.wait(60)
        elapsed = last_progress - started
        stats = dict(service.stats())
    finally:
        service.stop()
        engine.dispose()
    stored = stats.get("writer_batches", 0)
    return stored / elapsed, cpu_s / max(1, stored), stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--batches-per-device", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--publish", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        batches = payloads(args.devices, args.batches_per_device, round_=args.round)
        print(time.time(), flush=True)
        _publish(args.publish, batches)
        return
    devices = args.devices or (100 if args.quick else 500)
    per_device = args.batches_per_device or (20 if args.quick else 40)
    rounds = args.rounds or (5 if args.quick else 3)

    import ctypes  # noqa: F401  (imported here: the services' pre-exec hook runs as another user and

    #                               cannot import it from a root-only Python installation)
    from tests.service_stores import Postgres, PostgresTemplate
    from tests.services import Mosquitto

    messages = payloads(devices, per_device)
    size = sum(len(p) for _, p in messages) / len(messages)
    print(f"{len(messages)} telemetry batches from {devices} devices, {size:.0f} bytes each on average; "
          f"{rounds} rounds of raw then controller")
    raws: list[float] = []
    rates: list[float] = []
    ratios: list[float] = []
    raw_cpus: list[float] = []
    cpus: list[float] = []
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
            # The machine is shared: the two measurements of a round are taken back to back, and the
            # figures are medians over rounds of per-round values.
            for round_ in range(rounds):
                raw, raw_cpu_s = raw_rate(broker.port, messages, devices, per_device, round_)
                rate, cpu_s, stats = controller_rate(broker.port, pg.url, messages, devices, per_device, round_)
                raws.append(raw)
                rates.append(rate)
                ratios.append(rate / raw)
                raw_cpus.append(raw_cpu_s * 1e6)
                cpus.append(cpu_s * 1e6)
                print(f"round {round_ + 1}: raw paho subscriber {raw:7.0f} msg/s ({raw_cpu_s * 1e6:4.0f} µs CPU/msg); "
                      f"controller ingest -> PostgreSQL {rate:7.0f} msg/s ({cpu_s * 1e6:4.0f} µs CPU/msg; stored "
                      f"{stats.get('writer_batches', 0)}, rejected {stats.get('subscriber_rejected', 0)}, "
                      f"duplicates {stats.get('subscriber_duplicates', 0)}); ratio {rate / raw:.2f}")
        finally:
            broker.close()
            pg.close()
            template.remove()
    ratio = statistics.median(ratios)
    print(f"median ratio vs raw: {ratio:.2f} (goal >= 0.5); CPU of the receiving process per message: "
          f"raw {statistics.median(raw_cpus):.0f} µs, controller {statistics.median(cpus):.0f} µs")
    print(json.dumps({"msgs_per_s": round(statistics.median(rates)), "raw_msgs_per_s": round(statistics.median(raws)),
                      "ratio_vs_raw": round(ratio, 3), "cpu_us_per_msg": round(statistics.median(cpus), 1),
                      "raw_cpu_us_per_msg": round(statistics.median(raw_cpus), 1), "rounds": rounds,
                      "messages": len(messages), "devices": devices}))


if __name__ == "__main__":
    main()
