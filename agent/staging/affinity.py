"""Where the stager's threads run while a download is under way: the hash on a CPU of its own, and
the workers at a lower priority than serving.

Staging is CPU-bound once the disk is fast: sha256 cannot be split across cores, so the download runs
at the speed of one core hashing, and anything that lands on that core (the receiving and writing
threads, disk-completion interrupts and the wake-ups they cause) is time the hash loses. Left to the
scheduler, the three threads share cores with each other while another core sits idle. Measured on a
2-core VM, 1 GB over loopback: the hash thread on one CPU and the receive/write threads on the other
ran at 0.91 of bare sha256 (median of 6), unpinned 0.71-0.87 depending on the minute; pinning only the
I/O threads did not help (0.69): it is the hash's CPU that must stay clear of them.

Only the stager's own threads are pinned, for the length of one download; the receiving (caller's)
thread gets its previous affinity back afterwards. Other threads and processes (the inference server)
keep every CPU, so the scheduler moves them off the hashing core when it is busy. The hash goes to the
allowed CPU that has served the fewest hardware interrupts, because devices route most interrupts to one
core (CPU0 on Raspberry Pi and Jetson boards, the disk's queue on a VM).

A download is background work on a device that serves inference; `StagingConfig.nice` (off by
default) renices the hash and write workers so a busy server keeps most of the CPU. Measured on 2 cores
with inference running back to back (a MobileNet-shaped model, 2 intra-op threads; 4.1 ms p50 alone):
during a 1 GB download p50/p99 were 18-20 / 30-33 ms with the workers at nice 0 and 7-9 / 15-18 ms at
+10, the download then taking 155-190 MB/s of what inference left. The price when nothing is served:
any other busy process outranks the workers too, and on the same 2 cores with `bench/stage.py`'s
server beside them the download fell from ~0.87 to ~0.70 of the limit at +10 (0.74-0.84 at +5). The
receiving thread is the caller's and keeps its priority (raising niceness cannot be undone unprivileged).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

INTERRUPTS = Path("/proc/interrupts")


@dataclass(frozen=True)
class CpuSplit:
    hash_cpus: frozenset[int]
    io_cpus: frozenset[int]


def split_cpus(allowed: frozenset[int], interrupts: dict[int, int]) -> CpuSplit | None:
    """One CPU for hashing, the rest for receiving and writing; None with fewer than two CPUs.

    The hash CPU is the allowed one with the fewest interrupts (CPUs missing from `interrupts` count
    as zero); ties go to the highest-numbered CPU, the one boards leave quietest by default.
    """
    if len(allowed) < 2:
        return None
    hash_cpu = min(allowed, key=lambda cpu: (interrupts.get(cpu, 0), -cpu))
    return CpuSplit(frozenset({hash_cpu}), allowed - {hash_cpu})


def parse_interrupts(text: str) -> dict[int, int]:
    """Device interrupts per CPU from `/proc/interrupts` (header `CPU0 CPU1 …`, one row per source).

    Only numbered rows routed to some CPUs count (disks, NICs, USB). Named rows (`LOC` timer ticks,
    `RES`/`IPI` inter-processor calls) and numbered per-CPU ones (the ARM `arch_timer`, counted on every
    CPU) reach all CPUs alike and would drown out where the devices are routed.
    """
    lines = text.splitlines()
    if not lines:
        return {}
    cpus: list[int] = []
    for name in lines[0].split():
        if not (name.startswith("CPU") and name[3:].isdigit()):
            return {}
        cpus.append(int(name[3:]))
    totals = dict.fromkeys(cpus, 0)
    for line in lines[1:]:
        label, _, rest = line.strip().partition(":")
        if not label.isdigit():
            continue
        fields = rest.split()[:len(cpus)]
        if len(fields) < len(cpus) or not all(f.isdigit() for f in fields):
            continue
        counts = [int(f) for f in fields]
        if all(counts):
            continue
        for cpu, count in zip(cpus, counts, strict=True):
            totals[cpu] += count
    return totals


def read_interrupts(path: Path = INTERRUPTS) -> dict[int, int]:
    try:
        return parse_interrupts(path.read_text())
    except OSError:
        return {}


def plan() -> CpuSplit | None:
    """The split for this thread's allowed CPUs, or None where affinity cannot be set (not Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        allowed = frozenset(os.sched_getaffinity(0))
    except OSError:
        return None
    return split_cpus(allowed, read_interrupts())


def pin_current_thread(cpus: frozenset[int]) -> bool:
    """Restrict the calling thread to `cpus`; False (and nothing changed) where the system refuses."""
    try:
        os.sched_setaffinity(0, cpus)
        return True
    except OSError as e:  # a CPU went offline, a sandbox forbids it: staging works unpinned
        log.debug("cannot pin staging thread to CPUs %s: %s", sorted(cpus), e)
        return False


@contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the body on `cpus` (None: unchanged) and give the calling thread its old affinity back."""
    if cpus is None:
        yield
        return
    before = frozenset(os.sched_getaffinity(0))
    changed = pin_current_thread(cpus)
    try:
        yield
    finally:
        if changed:
            pin_current_thread(before)


def lower_current_thread_priority(nice: int) -> None:
    """Add `nice` to the calling thread's niceness (Linux: per thread); a refusal leaves it as it was.

    Raising niceness needs no privilege but cannot be undone without one, so only threads that end
    with the download (the workers) are reniced, never the caller's.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:
        log.debug("cannot lower the staging thread's priority: %s", e)


def worker_target(target: Callable[[], None], cpus: frozenset[int] | None, nice: int = 0) -> Callable[[], None]:
    """A worker thread's body that first pins its thread to `cpus` and lowers its priority by `nice`."""
    def run() -> None:
        if cpus is not None:
            pin_current_thread(cpus)
        lower_current_thread_priority(nice)
        target()
    return run
