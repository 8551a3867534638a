"""The staging writer on real filesystems: direct I/O for aligned chunks, the page cache for the rest,
and a fallback when the kernel refuses a direct write."""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
from pathlib import Path

import pytest

from agent.slots import FileSlotStore
from agent.staging import Stager, StagingConfig
from agent.staging.diskio import DIRECT_ALIGN, PartWriter, open_direct
from manifests.verify import SignedTarget
from tests.agent.http_source import serve

MIB = 1 << 20


def aligned_buffer(data: bytes) -> memoryview:
    buf = mmap.mmap(-1, max(len(data), 1))
    buf[:len(data)] = data
    return memoryview(buf)[:len(data)]


def write_chunks(path: Path, chunks: list[memoryview], direct: bool = True) -> PartWriter:
    with open(path, "wb", buffering=0) as out:
        writer = PartWriter(path, out.fileno(), 0, direct=direct)
        try:
            for chunk in chunks:
                writer.write(chunk)
        finally:
            writer.close()
        os.fsync(out.fileno())
    return writer


def test_aligned_and_unaligned_chunks_land_byte_for_byte(tmp_path: Path) -> None:
    if not open_direct_supported(tmp_path):
        pytest.skip("this filesystem takes no O_DIRECT; the fallback test covers it")
    data = os.urandom(3 * MIB + 777)
    view = aligned_buffer(data)
    # aligned 1 MiB, aligned 2 MiB, then an unaligned tail: direct, direct, page cache
    chunks = [view[:MIB], view[MIB:3 * MIB], view[3 * MIB:]]
    path = tmp_path / "part"
    writer = write_chunks(path, chunks)
    assert path.read_bytes() == data
    assert writer.offset == len(data) and writer.direct_bytes == 3 * MIB


def test_after_an_unaligned_chunk_later_writes_stay_correct(tmp_path: Path) -> None:
    data = os.urandom(2 * MIB + 3 * DIRECT_ALIGN)
    view = aligned_buffer(data)
    # a short chunk (a broken connection) shifts every later offset off the alignment
    chunks = [view[:100], view[100:MIB + 100], view[MIB + 100:]]
    path = tmp_path / "part"
    write_chunks(path, chunks)
    assert path.read_bytes() == data


def test_a_refused_direct_write_falls_back_to_the_page_cache(tmp_path: Path) -> None:
    if not open_direct_supported(tmp_path):
        pytest.skip("this filesystem takes no O_DIRECT at all")
    data = os.urandom(2 * MIB)
    backing = aligned_buffer(b"\0" + data)
    misaligned = backing[1:]  # aligned offset and length, but the buffer address is not: EINVAL
    path = tmp_path / "part"
    writer = write_chunks(path, [misaligned[:MIB], misaligned[MIB:]])
    assert writer.direct_bytes == 0
    assert path.read_bytes() == data


def test_buffered_only_when_direct_io_is_off(tmp_path: Path) -> None:
    data = os.urandom(MIB)
    path = tmp_path / "part"
    with open(path, "wb", buffering=0) as out:
        writer = PartWriter(path, out.fileno(), 0, direct=False)
        writer.write(aligned_buffer(data))
        assert writer.direct_bytes == 0
    assert path.read_bytes() == data


@pytest.mark.parametrize("root", ["tmp", "shm"])
def test_stage_on_disk_and_on_tmpfs(tmp_path: Path, root: str) -> None:
    """The stager gives the same verified file whether the filesystem takes direct I/O or not."""
    if root == "shm":
        shm = Path("/dev/shm")
        if not shm.is_dir() or not os.access(shm, os.W_OK):
            pytest.skip("no writable /dev/shm (tmpfs) on this machine")
        base = shm / f"edgefleet-{os.getpid()}-{tmp_path.name}"
    else:
        base = tmp_path / "device"
    data = os.urandom(5 * MIB + 4321)
    target = SignedTarget("models/m/1/ort-fp32.onnx", len(data), hashlib.sha256(data).hexdigest(), {})
    try:
        stager = Stager(base / "staging", FileSlotStore(base), config=StagingConfig(reserve_bytes=0))
        with serve({"m": data}) as server:
            result = stager.stage(target, Url(server.url("m")))
        assert result.path.read_bytes() == data
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_resume_from_an_unaligned_partial_refetches_back_to_the_alignment(tmp_path: Path) -> None:
    data = os.urandom(4 * MIB)
    target = SignedTarget("models/m/1/ort-fp32.onnx", len(data), hashlib.sha256(data).hexdigest(), {})
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / f"{target.sha256}.part").write_bytes(data[:2 * MIB + 1000])
    stager = Stager(staging, FileSlotStore(tmp_path), config=StagingConfig(reserve_bytes=0))
    with serve({"m": data}) as server:
        result = stager.stage(target, Url(server.url("m")))
        assert [r for _, r in server.requests] == [f"bytes={2 * MIB}-"]
    assert result.resumed_from == 2 * MIB
    assert result.path.read_bytes() == data


class Url:
    def __init__(self, url: str) -> None:
        self.url = url

    def url_for(self, target: SignedTarget, fresh: bool = False) -> str:
        return self.url


def open_direct_supported(folder: Path) -> bool:
    """Whether the kernel and filesystem take O_DIRECT here, asked with os.open itself (not with the code
    under test, whose bug would otherwise turn into a skip)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    probe = folder / ".direct-probe"
    probe.touch()
    try:
        fd = os.open(probe, os.O_WRONLY | flag)
    except OSError:
        return False
    else:
        os.close(fd)
        return True
    finally:
        probe.unlink()


def test_open_direct_agrees_with_the_kernel(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.touch()
    fd = open_direct(path)
    try:
        assert (fd is not None) == open_direct_supported(tmp_path)
    finally:
        if fd is not None:
            os.close(fd)
