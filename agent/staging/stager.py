"""Stage one signed target into the content-addressed slot store, resumably and within bounds.

    staging/<sha256>.part  ──(length bytes, sha256 matches, fsync)──▶  models/<sha256>/<file>

The signed target is the only authority on length and hash. The stager:

- checks free space (remaining bytes + a reserve) before the first byte is written;
- resumes from an existing `.part` with `Range`, re-hashing the bytes it already has, and starts
  over when a server answers 200 instead of 206;
- reads at most `length + 1` bytes in total, so endless data stops one byte past the signed length;
- hashes and writes on two worker threads while the calling thread receives, so socket, hash and
  disk overlap (a download-then-hash-then-write loop runs at the sum of the three costs, this at the
  slowest one when the cores are free); aligned chunks go to disk with direct I/O (no page-cache
  copy), and the hash thread gets a CPU of its own for the length of the download (`affinity`);
- enforces an overall deadline and a minimum average speed after a grace period (slow retrieval);
- keeps at most one partial file: others are removed before a new download starts.

What it deliberately does not do: choose the variant, trust any size or hash from the URL or the
server, or log a URL whole (presigned query strings are credentials).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.slots import SlotStore
from agent.staging import affinity
from agent.staging.diskio import DIRECT_ALIGN, BufferRing, PartWriter
from agent.staging.errors import (
    DiskSpaceError,
    IntegrityError,
    PackageError,
    SlowRetrievalError,
    TransferError,
    UrlExpiredError,
)
from agent.staging.packages import package_format, unpack
from agent.staging.sources import Fetcher, FetchStream, TargetLocator, UrlFetcher, redact_url
from manifests.verify import SignedTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagingConfig:
    # One buffer of the ring, filled by several receives, then hashed and written (direct I/O) at once.
    # Four 4 MiB buffers measured fastest with direct I/O (1-2 MiB: more hand-offs; 8+ buffers or
    # 8-16 MiB: colder caches); see bench/stage.py.
    chunk_bytes: int = 4 << 20
    buffers: int = 4  # buffers in the ring: one being received, the rest being hashed and written
    direct_io: bool = True  # aligned chunks skip the page cache (O_DIRECT) where the filesystem allows
    early_writeback: bool = True  # sync_file_range after each buffered slice (Linux): a short final fsync
    pin_threads: bool = True  # hash thread on a CPU of its own, receive/write on the others (`affinity`)
    nice: int = 0  # added to the hash and write workers' niceness, so serving keeps its CPU (`affinity`)
    deadline_s: float = 3600.0
    min_speed_bytes_per_s: float = 16 * 1024
    min_speed_grace_s: float = 10.0
    io_timeout_s: float = 30.0
    reserve_bytes: int = 64 * 1024 * 1024
    max_attempts: int = 6
    max_url_refreshes: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0


@dataclass(frozen=True)
class StageResult:
    path: Path
    bytes_received: int  # bytes read from sources in this call, including any that were thrown away
    attempts: int
    resumed_from: int  # bytes of an earlier partial file that were reused
    already_present: bool = False


ProgressHook = Callable[[int, int], None]  # (bytes of the target on disk, signed length)


class Stager:
    def __init__(
        self,
        staging_dir: Path,
        slots: SlotStore,
        fetcher: Fetcher | None = None,
        config: StagingConfig | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.staging_dir = staging_dir
        self.slots = slots
        self.fetcher = fetcher or UrlFetcher()
        self.config = config or StagingConfig()
        self.monotonic = monotonic
        self.sleep = sleep
        staging_dir.mkdir(parents=True, exist_ok=True)

    def part_path(self, target: SignedTarget) -> Path:
        return self.staging_dir / f"{target.sha256}.part"

    def partial_files(self) -> list[Path]:
        return sorted(self.staging_dir.glob("*.part"))

    def clear(self, keep: SignedTarget | None = None) -> None:
        """Remove partial files, except the one of `keep` (the download about to resume)."""
        keep_path = self.part_path(keep) if keep is not None else None
        for part in self.partial_files():
            if part != keep_path:
                part.unlink(missing_ok=True)

    def stage(self, target: SignedTarget, locator: TargetLocator,
              progress: ProgressHook | None = None) -> StageResult:
        file_name = target.name.rsplit("/", 1)[-1]
        if self.slots.has(target.sha256):
            return StageResult(self.slots.file_path(target.sha256, file_name), 0, 0, 0, already_present=True)
        self.clear(keep=target)
        part = self.part_path(target)
        existing = _resume_offset(part, target.length)
        if existing < 0:
            part.unlink()
            existing = 0
        self._check_space(target.length - existing)
        cfg = self.config
        deadline = self.monotonic() + cfg.deadline_s
        url = locator.url_for(target)
        refreshes = 0
        attempts = 0
        received = 0
        resumed_from = existing
        restarted_clean = False
        while True:
            attempts += 1
            try:
                received += self._attempt(target, part, url, deadline, progress)
                break
            except IntegrityError:
                # Bytes kept from before a power cut may not be what was written (unsynced blocks read
                # back as zeros): a resumed file that fails its hash gets one clean download.
                if resumed_from == 0 or restarted_clean:
                    raise
                restarted_clean = True
                log.warning("staging %s: resumed file failed its hash; downloading it again", target.name)
            except UrlExpiredError:
                refreshes += 1
                if refreshes > cfg.max_url_refreshes:
                    raise
                log.info("staging %s: URL expired, asking for a fresh one", target.name)
                url = locator.url_for(target, fresh=True)
            except TransferError as e:
                received += e.bytes_received
                if e.restart or e.range_not_satisfiable:
                    part.unlink(missing_ok=True)
                if attempts >= cfg.max_attempts:
                    raise
                if self.monotonic() >= deadline:
                    raise SlowRetrievalError(f"staging {target.name}: deadline of {cfg.deadline_s} s passed") from e
                delay = min(cfg.backoff_s * 2 ** (attempts - 1), cfg.max_backoff_s)
                log.info("staging %s from %s: %s; retry %d in %.1f s", target.name, redact_url(url), e,
                         attempts, delay)
                self.sleep(delay)
        fmt = package_format(target.custom)
        unpacker = None if fmt is None else functools.partial(unpack, fmt)
        try:
            final = self.slots.adopt(target.sha256, file_name, part, unpacker)
        except PackageError:
            part.unlink(missing_ok=True)
            raise
        return StageResult(final, received, attempts, resumed_from)

    def _check_space(self, needed_bytes: int) -> None:
        st = os.statvfs(self.staging_dir)
        free = st.f_bavail * st.f_frsize
        if free < needed_bytes + self.config.reserve_bytes:
            raise DiskSpaceError(
                f"model disk has {free} bytes free; need {needed_bytes} + {self.config.reserve_bytes} reserve")

    def _attempt(self, target: SignedTarget, part: Path, url: str, deadline: float,
                 progress: ProgressHook | None) -> int:
        """One request: resume from the partial file, stream the rest, verify. Returns bytes read."""
        cfg = self.config
        offset = max(0, _resume_offset(part, target.length))
        hasher = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:
                left = offset
                while left and (chunk := f.read(min(cfg.chunk_bytes, left))):
                    hasher.update(chunk)
                    left -= len(chunk)
        if offset == target.length:
            return self._finish(target, part, hasher, 0)
        stream = self.fetcher.open(url, offset, cfg.io_timeout_s)
        received = 0
        try:
            if stream.start != offset:
                # The server ignored Range (200): what arrives starts at byte 0.
                offset = stream.start
                hasher = hashlib.sha256()
            if stream.announced_length is not None and stream.start + stream.announced_length > target.length:
                raise IntegrityError(f"{target.name}: source announces {stream.start + stream.announced_length} "
                                     f"bytes, signed length is {target.length}")
            split = affinity.plan() if self.config.pin_threads else None
            # the receiving thread (this one) runs on the I/O CPUs and gets its own affinity back afterwards
            with open(part, "r+b" if part.exists() else "wb", buffering=0) as out, \
                    affinity.pinned(split.io_cpus if split else None):
                out.truncate(offset)
                out.seek(offset)
                received = self._pump(target, stream, part, out, hasher, offset, deadline, progress, split)
                out.flush()
                os.fsync(out.fileno())
        except IntegrityError:
            part.unlink(missing_ok=True)
            raise
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                part.unlink(missing_ok=True)
                raise DiskSpaceError(f"model disk filled up while staging {target.name}: {e}") from e
            raise
        finally:
            stream.close()
        return self._finish(target, part, hasher, received)

    def _finish(self, target: SignedTarget, part: Path, hasher: hashlib._Hash, received: int) -> int:
        digest = hasher.hexdigest()
        if digest != target.sha256:
            part.unlink(missing_ok=True)
            raise IntegrityError(f"{target.name}: sha256 expected {target.sha256}, got {digest}")
        return received

    def _pump(self, target: SignedTarget, src: FetchStream, part: Path, out: io.FileIO, hasher: hashlib._Hash,
              offset: int, deadline: float, progress: ProgressHook | None, split: affinity.CpuSplit | None) -> int:
        """Receive on this thread into a small ring of large buffers; hash and write them on two workers.

        Receiving, hashing and writing each release the GIL, so on two or more cores the three overlap
        and staging runs near the speed of the slowest one instead of the sum. A buffer is filled by
        several receives (the deadline and minimum speed are checked after each), then handed to both
        workers at once and reused when both are done with it: no per-chunk allocation and few Python
        steps per megabyte. The write worker sends aligned buffers straight to the disk (direct I/O)
        and starts writeback of anything it writes through the page cache, so the final fsync has
        little left to do (`diskio`). With two or more CPUs the hash worker is pinned to one of them
        and the receiving and writing threads to the others, until the download ends; with `nice` the
        workers run reniced, so a device's inference keeps the CPU it needs (`affinity`).
        """
        cfg = self.config
        ring = BufferRing(max(2, cfg.buffers), cfg.chunk_bytes)
        hash_queue: queue.Queue[tuple[int, int] | None] = queue.Queue()
        write_queue: queue.Queue[tuple[int, int] | None] = queue.Queue()
        failure: list[BaseException] = []
        writer = PartWriter(part, out.fileno(), offset, cfg.direct_io, cfg.early_writeback)

        def hash_worker() -> None:
            while (item := hash_queue.get()) is not None:
                index, n = item
                try:
                    hasher.update(ring.views[index][:n])
                finally:
                    ring.release(index)

        def write_worker() -> None:
            while (item := write_queue.get()) is not None:
                index, n = item
                try:
                    if not failure:
                        writer.write(ring.views[index][:n])
                except BaseException as e:  # handed to the reading thread, which raises it
                    failure.append(e)
                finally:
                    ring.release(index)

        hash_cpus = split.hash_cpus if split else None
        io_cpus = split.io_cpus if split else None
        workers = [
            threading.Thread(target=affinity.worker_target(hash_worker, hash_cpus, cfg.nice), name="stager-hash",
                             daemon=True),
            threading.Thread(target=affinity.worker_target(write_worker, io_cpus, cfg.nice), name="stager-write",
                             daemon=True),
        ]
        for worker in workers:
            worker.start()
        position = offset
        received = 0
        started = self.monotonic()
        ended = False
        broken: TransferError | None = None
        try:
            while not ended and broken is None and not failure:
                index = ring.acquire()
                buffer = ring.views[index]
                filled = 0
                while filled < len(buffer):
                    # Never ask for more than one byte past the signed length: endless data stops here.
                    want = min(len(buffer) - filled, target.length - position - filled + 1)
                    try:
                        n = src.readinto(buffer[filled:filled + want])
                    except TransferError as e:
                        # What arrived before the break is still written, so a resume starts after it.
                        broken = e
                        break
                    if n == 0:
                        ended = True
                        break
                    filled += n
                    if position + filled > target.length:
                        ring.release(index, both=True)
                        raise IntegrityError(
                            f"{target.name}: source sent more than the signed {target.length} bytes")
                    self._check_pace(target, position + filled, received + filled, started, deadline)
                if filled == 0:
                    ring.release(index, both=True)
                    continue
                hash_queue.put((index, filled))
                write_queue.put((index, filled))
                position += filled
                received += filled
                if progress is not None:
                    progress(position, target.length)
        finally:
            hash_queue.put(None)
            write_queue.put(None)
            for worker in workers:
                worker.join()
            writer.close()
        if failure:
            raise failure[0]
        if broken is not None:
            broken.bytes_received = received
            raise broken
        if position < target.length:
            e2 = TransferError(f"{target.name}: connection closed at {position} of {target.length} bytes")
            e2.bytes_received = received
            raise e2
        return received

    def _check_pace(self, target: SignedTarget, position: int, received: int, started: float,
                    deadline: float) -> None:
        cfg = self.config
        now = self.monotonic()
        if now > deadline:
            raise SlowRetrievalError(f"staging {target.name}: deadline of {cfg.deadline_s} s passed "
                                     f"at {position} of {target.length} bytes")
        elapsed = now - started
        if elapsed > cfg.min_speed_grace_s and received / elapsed < cfg.min_speed_bytes_per_s:
            raise SlowRetrievalError(
                f"staging {target.name}: {received / elapsed:.0f} B/s is below the minimum "
                f"{cfg.min_speed_bytes_per_s:.0f} B/s")


def _resume_offset(part: Path, length: int) -> int:
    """Where a download of `length` bytes resumes given its partial file: -1 when the file is longer
    than the signed length (start over), its size when complete, else its size rounded down to the
    direct-I/O alignment (a few KiB fetched again keep every later write aligned)."""
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0
    if size > length:
        return -1
    return size if size == length else size - size % DIRECT_ALIGN
