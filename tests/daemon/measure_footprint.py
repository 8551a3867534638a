"""Measure the real `edgefleet-agent run` process: RSS and CPU idle without a model, serving after an
update, and serving after a restart. Not a test (timings are not asserted); run by hand:

    .venv/bin/python -m tests.daemon.measure_footprint [--window-s 20]

Starts its own Mosquitto on a free port and a signed repository over HTTP (tests/daemon/fleet.py).
The last line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from controller.sample_models import train_digits_mlp
from tests.daemon.fleet import AgentProcess, ControllerSide, free_port, wait_for


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, window_s: float) -> tuple[float, float]:
    start_cpu, start = cpu_s(pid), time.monotonic()
    time.sleep(window_s)
    return round(rss_mb(pid), 1), round(100 * (cpu_s(pid) - start_cpu) / (time.monotonic() - start), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window-s", type=float, default=20.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="daemon-footprint-"))
    port = free_port()
    (tmp / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(tmp / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    model = train_digits_mlp(tmp / "mlp")
    controller = ControllerSide(tmp, port, "edge-footprint")
    agent = AgentProcess(tmp, controller, port, telemetry_sample_every_s=10, telemetry_batch_every_s=30)
    figures: dict[str, float] = {}
    try:
        agent.start()  # the first start pins the trust roots (python-tuf); measure after a restart
        wait_for(lambda: "online" in controller.presence(), 60, "online", agent.log)
        agent.terminate()
        agent.start()
        wait_for(lambda: controller.presence()[-1] == "online", 60, "online", agent.log)
        time.sleep(3)
        assert agent.proc is not None
        figures["idle_rss_mb"], figures["idle_cpu_pct"] = measure(agent.proc.pid, args.window_s)
        print(f"idle, no model:            RSS {figures['idle_rss_mb']:6.1f} MB  CPU {figures['idle_cpu_pct']} %")
        version = controller.assign(controller.publish_release(model, "1", 1))
        wait_for(lambda: controller.event("committed", version), 120, "committed", agent.log)
        time.sleep(2)
        figures["updated_rss_mb"], figures["updated_cpu_pct"] = measure(agent.proc.pid, args.window_s)
        print(f"serving after an update:   RSS {figures['updated_rss_mb']:6.1f} MB  CPU {figures['updated_cpu_pct']} %")
        agent.terminate()
        agent.start()
        wait_for(lambda: agent.serving(model), 60, "serving", agent.log)
        time.sleep(2)
        figures["restarted_rss_mb"], figures["restarted_cpu_pct"] = measure(agent.proc.pid, args.window_s)
        print(f"serving after a restart:   RSS {figures['restarted_rss_mb']:6.1f} MB  "
              f"CPU {figures['restarted_cpu_pct']} %")
    finally:
        agent.kill()
        agent.notify.close()
        controller.close()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
