"""A 3-wave rollout over 20 real agents: twenty `edgefleet-agent run` processes, each with its own MQTT
session, director-signature and TUF checks, staging, gate child process, ONNX Runtime and local
inference server, over a real Mosquitto, driven by this package's bridge, engine and director assigner.

The fleet first takes v1 in a single wave (every agent goes from nothing to serving), then v2 in three
waves (1 → 50 % → 100 %), which every agent hot-swaps in while serving v1. It ends with each agent
answering a real inference request with v2, its scores equal to the golden reference outputs.

    controller (bridge + engine + director assigner) ──MQTT──▶ 20 × edgefleet-agent run
    image repository over HTTP ◀──────────────────── TUF fetch, staging, gate child, swap
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.rollouts import RolloutState
from controller.rollouts.plan import WaveSpec
from controller.rollouts.signals import DeviceState
from controller.sample_models import SampleModel
from manifests.assignment import ReleaseRef
from tests.daemon.fleet import AgentProcess, wait_for

from .real_fleet_harness import RealFleet

pytestmark = pytest.mark.slow
N = 20
AGENTS = [f"edge-{i:02d}" for i in range(N)]
START_PACING_S = 0.15  # spreads the interpreters' start-up over ~3 s instead of one burst on a small host


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Any) -> Iterator[RealFleet]:
    # Fewer latency rounds than the default keep twenty gates within a small host's budget.
    with RealFleet(tmp_path, mosquitto.port, AGENTS, gate_latency_rounds=20) as f:
        yield f


class ServingWatch:
    """One thread per agent asking it for an inference every `interval_s`: what answered, and when."""

    def __init__(self, agents: dict[str, AgentProcess], model: SampleModel, interval_s: float = 0.25) -> None:
        self.seen: dict[str, list[tuple[float, str]]] = {d: [] for d in agents}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._watch, args=(d, a, model, interval_s), daemon=True)
                        for d, a in agents.items()]
        for thread in self.threads:
            thread.start()

    def _watch(self, device: str, agent: AgentProcess, model: SampleModel, interval_s: float) -> None:
        while not self.stop.wait(interval_s):
            try:
                _, version = agent.infer_scores(model, rows=1, timeout_s=30)
            except OSError as e:
                self.errors.append(f"{device}: {e}")
                continue
            self.seen[device].append((time.monotonic(), version))

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)

    def first_seen(self, device: str, version: str) -> float:
        return next(t for t, v in self.seen[device] if v == version)

    def last_seen(self, device: str, version: str) -> float:
        return max(t for t, v in self.seen[device] if v == version)


def test_three_wave_rollout_over_twenty_real_agents_completes(fleet: RealFleet, digits_mlp: SampleModel) -> None:
    started = time.monotonic()
    fleet.start_agents(pacing_s=START_PACING_S)
    online = time.monotonic()
    fleet.publish(digits_mlp, "1", 1)
    fleet.publish(digits_mlp, "2", 2)

    fleet.rollout("r-v1", "1", (WaveSpec(percent=100, soak_s=0.5),))
    first = fleet.settle("r-v1")
    assert first.state == RolloutState.COMPLETED, first.reason
    assert all(a.infer_scores(digits_mlp, rows=1, timeout_s=30)[1] == "1" for a in fleet.agents.values())

    first_done = time.monotonic()
    watch = ServingWatch(fleet.agents, digits_mlp)  # live traffic on every agent through the hot swaps
    try:
        fleet.rollout("r-v2", "2", (WaveSpec(count=1, soak_s=0.5), WaveSpec(percent=50, soak_s=0.5),
                                    WaveSpec(percent=100, soak_s=0.5)))
        record = fleet.settle("r-v2")
        wait_for(lambda: all(watch.seen[d] and watch.seen[d][-1][1] == "2" for d in AGENTS), 30,
                 "live traffic answered by v2 on every agent")
    finally:
        watch.close()
    second_done = time.monotonic()
    assert watch.errors == []  # every swap was made under traffic without a failed request
    for d in AGENTS:
        versions = [v for _, v in watch.seen[d]]
        assert versions == sorted(versions) and versions[0] == "1", (d, versions)  # 1 … 1 2 … 2, never back
    assert record.state == RolloutState.COMPLETED, record.reason
    assert [len(record.wave_devices(w)) for w in range(3)] == [1, 9, 10]
    assert sorted(d for w in range(3) for d in record.wave_devices(w)) == AGENTS
    (canary,) = record.wave_devices(0)
    for d in [*record.wave_devices(1), *record.wave_devices(2)]:  # the waves' order, seen from the traffic
        assert watch.last_seen(d, "1") > watch.first_seen(canary, "2"), d
    for d in record.wave_devices(2):
        assert watch.last_seen(d, "1") > max(watch.first_seen(w, "2") for w in record.wave_devices(1)), d
    assert {p.state for p in record.devices.values()} == {DeviceState.SUCCEEDED}
    assert [t.trigger for t in record.history] == ["create", "start", "settled", "soaked", "settled", "soaked",
                                                   "settled", "soaked_last"]

    latest = {d: fleet.ledger().latest(d) for d in AGENTS}
    assert all(e is not None and e.release == ReleaseRef("digits", "2") and e.version == 2
               for e in latest.values()), latest  # one assignment per rollout, none repeated
    wait_for(lambda: all(fleet.view.devices[d].active_release == ReleaseRef("digits", "2") for d in AGENTS), 30,
             "every agent's status naming v2 as active")

    reference = digits_mlp.golden.reference_outputs[:16]
    for d, agent in fleet.agents.items():
        scores, version = agent.infer_scores(digits_mlp, timeout_s=30)
        assert version == "2", d
        np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-5, err_msg=d)
    rss_mb = sum(rss_kb(a) for a in fleet.agents.values()) / 1024
    print(f"{N} agents online in {online - started:.1f} s; v1 to all in {first_done - online:.1f} s; "
          f"v2 in 3 waves in {second_done - first_done:.1f} s; {sum(map(len, watch.seen.values()))} live "
          f"requests, {len(watch.errors)} failed; agents' RSS {rss_mb:.0f} MB in all")


def rss_kb(agent: AgentProcess) -> int:
    assert agent.proc is not None
    line = next(x for x in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1])
