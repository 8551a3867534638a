"""Fan-out of signed assignments: the controller bridge vs a raw paho publisher, same broker, same run.

For N devices (a light subscriber fleet on one epoll loop, each subscribed to its own assignment
topic), time from the first publish until every device has received its message:

- `bridge`: `MqttBridge.publish_assignments` with real director-signed envelopes (signed beforehand;
  signing is timed separately and reported as `sign_seconds`);
- `raw`: one bare paho client publishing N retained QoS 1 messages of the same bytes.

Rounds alternate raw/bridge and the medians are compared. Starts its own Mosquitto on a free port.

    .venv/bin/python bench/fanout.py            # N = 10,000
    .venv/bin/python bench/fanout.py --quick    # N = 1,000, under a minute

Last line: one JSON object; headline keys `devices`, `seconds`, `ratio_vs_raw`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import wire  # noqa: E402
from controller.mqtt import BridgeConfig, MqttBridge  # noqa: E402
from controller.mqtt.loadgen import SubscriberFleet  # noqa: E402
from manifests.assignment import Assignment, ReleaseRef, TargetPin  # noqa: E402
from manifests.director import sign_envelope  # noqa: E402
from manifests.keyring import Keyring  # noqa: E402


class NullSink:
    def on_status(self, status: wire.Status) -> None: ...
    def on_event(self, event: wire.Event) -> None: ...
    def on_presence(self, presence: wire.Presence) -> None: ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"
                    "max_queued_messages 100000\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def sign_all(devices: list[str], workdir: Path) -> tuple[list[bytes], float]:
    keyring = Keyring.create(workdir / "keys")
    signers = keyring.signers("director")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    pins = (TargetPin("models/digits-mlp/1/ort-fp32.onnx", 41234, "a" * 64),
            TargetPin("models/digits-mlp/1/golden.npz", 98765, "b" * 64))
    started = time.perf_counter()
    payloads = [
        sign_envelope(Assignment(device_id=d, version=1, issued_at=now, expires_at=now + timedelta(days=30),
                                 release=ReleaseRef("digits-mlp", "1"), targets=pins, rollout_id="bench"),
                      signers)
        for d in devices
    ]
    return payloads, time.perf_counter() - started


def raw_round(client: mqtt.Client, devices: list[str], payloads: list[bytes], fleet: SubscriberFleet) -> float:
    fleet.expect(len(devices))
    started = time.perf_counter()
    for device_id, payload in zip(devices, payloads, strict=True):
        client.publish(wire.topic(device_id, "assignment"), payload, qos=1, retain=True)
    if not fleet.wait(120):
        raise SystemExit(f"raw: only {fleet.received} of {len(devices)} delivered")
    return time.perf_counter() - started


def bridge_round(bridge: MqttBridge, devices: list[str], payloads: list[bytes], fleet: SubscriberFleet) -> float:
    fleet.expect(len(devices))
    started = time.perf_counter()
    bridge.publish_assignments(zip(devices, payloads, strict=True), timeout_s=120)
    if not fleet.wait(120):
        raise SystemExit(f"bridge: only {fleet.received} of {len(devices)} delivered")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 devices, 2 rounds")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    n = args.devices or (1000 if args.quick else 10_000)
    rounds = args.rounds or (2 if args.quick else 3)
    devices = [f"dev-{i:05d}" for i in range(n)]

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        payloads, sign_s = sign_all(devices, workdir)
        print(f"signed {n} assignments ({len(payloads[0])} bytes each) in {sign_s:.2f} s "
              f"({n / sign_s:,.0f}/s)")
        broker, port = start_mosquitto(workdir)
        # Both publishers connect before the fleet: paho's own loop thread uses select(), which fails on
        # file descriptors above 1024, and the fleet takes one descriptor per device.
        bridge = MqttBridge(BridgeConfig("127.0.0.1", port, client_id="bench-controller"), NullSink())
        bridge.start()
        raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-publisher")
        raw.connect("127.0.0.1", port)
        raw.loop_start()
        fleet = SubscriberFleet("127.0.0.1", port, devices)
        try:
            t = time.perf_counter()
            fleet.start(timeout_s=300)
            print(f"{n} subscribers connected and subscribed in {time.perf_counter() - t:.1f} s")
            raw_s: list[float] = []
            bridge_s: list[float] = []
            for r in range(rounds):
                raw_s.append(raw_round(raw, devices, payloads, fleet))
                bridge_s.append(bridge_round(bridge, devices, payloads, fleet))
                print(f"round {r + 1}: raw paho {raw_s[-1]:.2f} s, bridge {bridge_s[-1]:.2f} s")
            sample = fleet.last_payload[devices[-1]]
            assert sample == payloads[-1], "a device received something other than its signed assignment"
        finally:
            raw.loop_stop()
            raw.disconnect()
            bridge.stop()
            fleet.stop()
            broker.terminate()
            broker.wait(10)

    seconds = statistics.median(bridge_s)
    raw_median = statistics.median(raw_s)
    print(f"median over {rounds} rounds: bridge {seconds:.2f} s, raw {raw_median:.2f} s, "
          f"ratio {seconds / raw_median:.2f}x "
          f"(goal <= 2x and <= 2 s for 10,000); including signing {seconds + sign_s:.2f} s")
    print(json.dumps({
        "devices": n,
        "seconds": round(seconds, 3),
        "ratio_vs_raw": round(seconds / raw_median, 3),
        "raw_seconds": round(raw_median, 3),
        "sign_seconds": round(sign_s, 3),
        "seconds_including_signing": round(seconds + sign_s, 3),
        "payload_bytes": len(payloads[0]),
        "rounds": rounds,
    }))


if __name__ == "__main__":
    main()
