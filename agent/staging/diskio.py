"""How staged bytes reach the model disk: a ring of page-aligned buffers and a writer that uses
direct I/O where the filesystem allows it.

Direct I/O (`O_DIRECT`) sends each aligned buffer from memory to the device without copying it into
the page cache first. For a large download that matters twice on a device: the copy is CPU the hash
needs, and gigabytes of freshly written page cache push the running model's pages out of memory (on
a VM guest, first-touch page-cache growth measured 4× slower than direct writes). Writes that are not
aligned (the tail of a file, a chunk cut short by a broken connection) and filesystems that refuse
direct I/O (tmpfs on older kernels, some network filesystems) go through the page cache, with writeback
started slice by slice so the final fsync is short. Durability never depends on either path: the
stager fsyncs before it renames.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path

# Offsets and lengths of direct writes are multiples of this (the largest logical block size in use;
# buffers come from mmap, so they are page-aligned too).
DIRECT_ALIGN = 4096

# Writeback of buffered writes is started one slice at a time: on a virtio disk, asking for a whole
# 8 MiB chunk at once made sync_file_range wait on the device queue and halved staging.
WRITEBACK_SLICE_BYTES = 1 << 20


class BufferRing:
    """`count` preallocated page-aligned buffers; each handed out is returned once by both workers (or
    by the reader when it never handed it out), so the reader never overwrites bytes still being hashed
    or written."""

    def __init__(self, count: int, size_bytes: int) -> None:
        self.views = [memoryview(mmap.mmap(-1, size_bytes)) for _ in range(count)]
        self._free: queue.Queue[int] = queue.Queue()
        self._pending = [0] * count
        self._lock = threading.Lock()
        for index in range(count):
            self._free.put(index)

    def acquire(self) -> int:
        index = self._free.get()
        self._pending[index] = 2
        return index

    def release(self, index: int, both: bool = False) -> None:
        with self._lock:
            self._pending[index] -= 2 if both else 1
            free = self._pending[index] == 0
        if free:
            self._free.put(index)


class PartWriter:
    """Writes consecutive chunks of one partial file from `offset` on, each with `os.pwrite`.

    `fd` is the caller's buffered descriptor (it truncates, fsyncs and closes it); a second descriptor
    opened with `O_DIRECT` takes the aligned chunks while the filesystem accepts them.
    """

    def __init__(self, path: Path, fd: int, offset: int, direct: bool = True, early_writeback: bool = True) -> None:
        self.fd = fd
        self.offset = offset
        self.direct_bytes = 0  # how many of the bytes written skipped the page cache
        self.direct_fd = open_direct(path) if direct else None
        self._writeback = start_writeback if early_writeback else _no_writeback

    def write(self, chunk: memoryview) -> None:
        view = chunk
        if self.direct_fd is not None and self.offset % DIRECT_ALIGN == 0 and len(view) % DIRECT_ALIGN == 0:
            try:
                while view:
                    n = os.pwrite(self.direct_fd, view, self.offset)
                    view = view[n:]
                    self.offset += n
                    self.direct_bytes += n
                    if n % DIRECT_ALIGN:
                        break  # a short, unaligned write: the rest goes through the page cache
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._stop_direct()  # this filesystem takes no direct writes after all
        for start in range(0, len(view), WRITEBACK_SLICE_BYTES):
            piece = view[start:start + WRITEBACK_SLICE_BYTES]
            piece_offset = self.offset
            while piece:
                n = os.pwrite(self.fd, piece, self.offset)
                piece = piece[n:]
                self.offset += n
            self._writeback(self.fd, piece_offset, self.offset - piece_offset)

    def close(self) -> None:
        self._stop_direct()

    def _stop_direct(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None


def open_direct(path: Path) -> int | None:
    """A write descriptor with O_DIRECT, or None where the platform or filesystem has no direct I/O."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def _no_writeback(fd: int, offset: int, n: int) -> None:
    return None


def _load_sync_file_range() -> Callable[[int, int, int], None]:
    """`sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)` where libc has it, else a no-op.

    It starts writeback of just-written pages without waiting, so dirty pages do not pile up until
    the final fsync (which still runs before the rename: durability does not depend on this).
    """
    if not sys.platform.startswith("linux"):
        return _no_writeback
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return _no_writeback
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    sync_file_range_write = 2

    def start(fd: int, offset: int, n: int) -> None:
        call(fd, offset, n, sync_file_range_write)  # advisory: a failure only means later writeback

    return start


start_writeback = _load_sync_file_range()
