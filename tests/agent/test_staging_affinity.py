"""The hash thread gets a CPU of its own while a download runs, and every thread's affinity is what it
was afterwards: the split as a pure function, `/proc/interrupts` parsing, and a real download over
loopback HTTP observed from inside (the progress hook runs on the receiving thread)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from agent.slots import FileSlotStore
from agent.staging import Stager, StagingConfig, affinity
from manifests.verify import SignedTarget
from tests.agent.http_source import serve

X86 = """\
           CPU0       CPU1       CPU2       CPU3
  0:         44          0          0          0   IO-APIC   2-edge      timer
 36:          0     203132          0          0   PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 39:       4337          0         12          0   PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
NMI:          0          0          0          0   Non-maskable interrupts
LOC:    9000000    9100000    9200000    9300000   Local timer interrupts
ERR:          0
MIS:          0
"""

RASPBERRY_PI = """\
           CPU0       CPU1       CPU2       CPU3
  9:          0          0          0          0     GICv2  25 Level     vgic
 11:    1931045    2055062    1871093    1970132     GICv2  30 Level     arch_timer
 29:     318211          0          0          0     GICv2 189 Level     mmc1, mmc0
 30:      52230          0          0          0     GICv2  65 Level     fe00b880.mailbox
IPI0:      2200       4021       3852       3722       Rescheduling interrupts
IPI1:    120022     148920     142233     139411       Function call interrupts
Err:          0
"""


def test_device_rows_count_and_named_and_per_cpu_rows_do_not() -> None:
    assert affinity.parse_interrupts(X86) == {0: 44 + 4337, 1: 203132, 2: 12, 3: 0}


def test_raspberry_pi_interrupts_land_on_cpu0_so_the_hash_goes_elsewhere() -> None:
    counts = affinity.parse_interrupts(RASPBERRY_PI)
    assert counts == {0: 318211 + 52230, 1: 0, 2: 0, 3: 0}  # arch_timer ticks on every CPU: not counted
    split = affinity.split_cpus(frozenset({0, 1, 2, 3}), counts)
    assert split is not None
    assert split.hash_cpus == {3} and split.io_cpus == {0, 1, 2}


def test_the_hash_takes_the_quietest_cpu_and_ties_go_to_the_highest() -> None:
    split = affinity.split_cpus(frozenset({0, 1, 2, 3}), affinity.parse_interrupts(X86))
    assert split == affinity.CpuSplit(frozenset({3}), frozenset({0, 1, 2}))
    split = affinity.split_cpus(frozenset({0, 1}), {0: 5, 1: 900})
    assert split == affinity.CpuSplit(frozenset({0}), frozenset({1}))
    # only allowed CPUs are considered (a container's cpuset); missing counts are zero
    split = affinity.split_cpus(frozenset({4, 6}), {4: 10})
    assert split == affinity.CpuSplit(frozenset({6}), frozenset({4}))


def test_one_cpu_gets_no_split() -> None:
    assert affinity.split_cpus(frozenset({3}), {}) is None


@pytest.mark.parametrize("text", ["", "garbage here\n 1: 2 3\n", "CPU0 CPUx\n"])
def test_unreadable_interrupt_tables_give_no_counts(text: str) -> None:
    assert affinity.parse_interrupts(text) == {}


def test_a_missing_interrupt_table_gives_no_counts(tmp_path: Path) -> None:
    assert affinity.read_interrupts(tmp_path / "absent") == {}


def allowed_cpus() -> frozenset[int]:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs CPU affinity (Linux)")
    cpus = frozenset(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    return cpus


def test_pinned_restores_the_callers_affinity_when_the_body_raises() -> None:
    before = allowed_cpus()
    one = frozenset({max(before)})
    with pytest.raises(RuntimeError), affinity.pinned(one):
        assert os.sched_getaffinity(0) == one
        raise RuntimeError("staging failed")
    assert os.sched_getaffinity(0) == before


Seen = list[tuple[frozenset[int], frozenset[int], int, int]]


def observe_staging(tmp_path: Path, pin: bool, nice: int = 10) -> tuple[Seen, frozenset[int]]:
    """Stage 24 MiB over loopback HTTP; at each progress step record the hash thread's and the caller's
    CPUs and niceness."""
    data = os.urandom(24 << 20)
    target = SignedTarget("models/m/1/ort-fp32.onnx", len(data), hashlib.sha256(data).hexdigest(), {})
    seen: Seen = []

    def progress(done: int, total: int) -> None:
        hashers = [t for t in threading.enumerate() if t.name == "stager-hash" and t.native_id is not None]
        assert len(hashers) == 1
        assert hashers[0].native_id is not None
        tid = hashers[0].native_id
        seen.append((frozenset(os.sched_getaffinity(tid)), frozenset(os.sched_getaffinity(0)),
                     os.getpriority(os.PRIO_PROCESS, tid), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

    stager = Stager(tmp_path / "staging", FileSlotStore(tmp_path),
                    config=StagingConfig(reserve_bytes=0, pin_threads=pin, nice=nice))

    class Url:
        def url_for(self, t: SignedTarget, fresh: bool = False) -> str:
            return server.url("m")

    with serve({"m": data}) as server:
        result = stager.stage(target, Url(), progress)
    assert result.path.read_bytes() == data
    return seen, frozenset(os.sched_getaffinity(0))


def test_a_download_hashes_on_its_own_cpu_at_lower_priority_and_gives_the_caller_its_cpus_back(
        tmp_path: Path) -> None:
    before = allowed_cpus()
    own_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    split = affinity.plan()
    assert split is not None and split.hash_cpus | split.io_cpus == before
    seen, after = observe_staging(tmp_path, pin=True)
    assert seen, "no progress reported"
    # the first report can come before the hash thread has set itself up; from then on it stays so
    assert seen[-1] == (split.hash_cpus, split.io_cpus, min(19, own_nice + 10), own_nice)
    assert all(caller == split.io_cpus and caller_nice == own_nice for _, caller, _, caller_nice in seen)
    assert after == before
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own_nice


def test_without_pinning_or_renicing_no_thread_is_changed(tmp_path: Path) -> None:
    before = allowed_cpus()
    own_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen, after = observe_staging(tmp_path, pin=False, nice=0)
    assert seen and all(s == (before, before, own_nice, own_nice) for s in seen)
    assert after == before
