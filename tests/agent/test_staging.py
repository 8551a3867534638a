"""The stager over real transports: a loopback HTTP server with faults, a real S3 (SeaweedFS) with
expiring presigned URLs, file:// and a real small filesystem that fills up."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.slots import FileSlotStore
from agent.staging import (
    BaseUrlLocator,
    DiskSpaceError,
    IntegrityError,
    SlowRetrievalError,
    Stager,
    StagingConfig,
    TransferError,
    UrlExpiredError,
    redact_url,
)
from manifests.verify import SignedTarget
from tests.agent.http_source import Faults, serve

MIB = 1 << 20


def make_target(data: bytes, name: str = "models/m/1/ort-fp32.onnx") -> SignedTarget:
    return SignedTarget(name, len(data), hashlib.sha256(data).hexdigest(), {"kind": "variant"})


class FixedUrl:
    def __init__(self, url: str) -> None:
        self.url = url

    def url_for(self, target: SignedTarget, fresh: bool = False) -> str:
        return self.url


def stager(root: Path, **config: object) -> Stager:
    cfg = StagingConfig(reserve_bytes=0, backoff_s=0.01, **config)  # type: ignore[arg-type]
    return Stager(root / "staging", FileSlotStore(root), config=cfg)


@pytest.fixture
def payload() -> bytes:
    return os.urandom(8 * MIB + 12345)


def assert_staged(root: Path, target: SignedTarget, data: bytes) -> None:
    final = root / "models" / target.sha256 / "ort-fp32.onnx"
    assert final.read_bytes() == data
    assert list((root / "staging").iterdir()) == []


def test_http_download_is_verified_and_adopted(tmp_path: Path, payload: bytes) -> None:
    target = make_target(payload)
    with serve({"m": payload}) as server:
        result = stager(tmp_path).stage(target, FixedUrl(server.url("m")))
    assert result.bytes_received == len(payload) and result.attempts == 1
    assert_staged(tmp_path, target, payload)
    again = stager(tmp_path).stage(target, FixedUrl("http://127.0.0.1:9/never-contacted"))
    assert again.already_present and again.bytes_received == 0


def test_resume_after_a_cut_redownloads_less_than_ten_percent(tmp_path: Path, payload: bytes) -> None:
    target = make_target(payload)
    with serve({"m": payload}, Faults(cut_after_bytes=5 * MIB)) as server:
        result = stager(tmp_path).stage(target, FixedUrl(server.url("m")))
        assert [r for _, r in server.requests] == [None, f"bytes={5 * MIB}-"]
        assert server.bytes_sent <= 1.1 * len(payload)
    assert result.attempts == 2 and result.bytes_received == len(payload)
    assert_staged(tmp_path, target, payload)


def test_resume_across_processes_from_the_partial_file(tmp_path: Path, payload: bytes) -> None:
    """A first stager gives up after the cut (as if the agent died); a new one resumes the .part file."""
    target = make_target(payload)
    with serve({"m": payload}, Faults(cut_after_bytes=3 * MIB)) as server:
        with pytest.raises(TransferError):
            stager(tmp_path, max_attempts=1).stage(target, FixedUrl(server.url("m")))
        parts = list((tmp_path / "staging").glob("*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size == 3 * MIB
        result = stager(tmp_path).stage(target, FixedUrl(server.url("m")))
        assert server.bytes_sent == len(payload)
    assert result.resumed_from == 3 * MIB
    assert_staged(tmp_path, target, payload)


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, payload: bytes) -> None:
    target = make_target(payload)
    with serve({"m": payload}, Faults(cut_after_bytes=2 * MIB, ignore_range=True)) as server:
        result = stager(tmp_path).stage(target, FixedUrl(server.url("m")))
        assert server.requests[1][1] == f"bytes={2 * MIB}-"
    assert result.bytes_received == len(payload) + 2 * MIB
    assert_staged(tmp_path, target, payload)


def test_endless_data_stops_one_byte_past_the_signed_length(tmp_path: Path) -> None:
    data = b"\x00" * MIB
    target = make_target(data)
    with serve({"m": data}, Faults(endless=True)) as server, pytest.raises(IntegrityError, match="more than"):
        stager(tmp_path).stage(target, FixedUrl(server.url("m")))
    assert list((tmp_path / "staging").iterdir()) == []
    assert not (tmp_path / "models" / target.sha256).exists()


def test_announced_oversize_and_wrong_hash_are_refused(tmp_path: Path, payload: bytes) -> None:
    short = make_target(payload[:MIB])
    with serve({"m": payload}) as server, pytest.raises(IntegrityError, match="announces"):
        stager(tmp_path).stage(short, FixedUrl(server.url("m")))
    forged = SignedTarget(short.name, len(payload), hashlib.sha256(b"other").hexdigest(), {})
    with serve({"m": payload}) as server, pytest.raises(IntegrityError, match="sha256 expected"):
        stager(tmp_path).stage(forged, FixedUrl(server.url("m")))
    assert list((tmp_path / "staging").iterdir()) == []


class ExpiringLocator:
    """Hands out presigned-looking URLs; `fresh=True` gets a new token."""

    def __init__(self, server_url: str, server_tokens: set[str]) -> None:
        self.base = server_url
        self.tokens = server_tokens
        self.issued = 0

    def url_for(self, target: SignedTarget, fresh: bool = False) -> str:
        self.issued += 1
        token = f"t{self.issued}"
        if fresh:
            self.tokens.add(token)
        return f"{self.base}?token={token}&X-Amz-Signature=secret"


def test_expired_presigned_url_asks_for_a_fresh_one_and_never_logs_it(
        tmp_path: Path, payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    target = make_target(payload)
    tokens: set[str] = set()
    with serve({"m": payload}, Faults(valid_tokens=tokens, cut_after_bytes=MIB)) as server:
        locator = ExpiringLocator(server.url("m"), tokens)
        with caplog.at_level(logging.DEBUG):
            stager(tmp_path).stage(target, locator)
    assert locator.issued == 2
    assert "secret" not in caplog.text and "token=" not in caplog.text
    assert_staged(tmp_path, target, payload)
    assert redact_url("https://u:p@h:9000/b/k?X-Amz-Signature=s#f") == "https://h:9000/b/k?…"


def test_real_s3_presigned_url_expiry(tmp_path: Path, s3: object, payload: bytes) -> None:
    client = s3.client()  # type: ignore[attr-defined]
    bucket = s3.bucket  # type: ignore[attr-defined]
    target = make_target(payload)
    client.put_object(Bucket=bucket, Key=target.store_key, Body=payload)

    class S3Locator:
        def __init__(self) -> None:
            self.fresh_calls = 0

        def url_for(self, target: SignedTarget, fresh: bool = False) -> str:
            self.fresh_calls += fresh
            return str(client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": target.store_key},
                                                     ExpiresIn=1 if not fresh else 600))

    locator = S3Locator()
    stale = locator.url_for(target)
    deadline = time.monotonic() + 30
    while True:  # wait until S3 itself refuses the short-lived URL
        try:
            urllib.request.urlopen(urllib.request.Request(stale, headers={"Range": "bytes=0-0"}), timeout=5).close()
        except urllib.error.HTTPError as e:
            assert e.code == 403
            break
        assert time.monotonic() < deadline, "presigned URL never expired"
        time.sleep(0.2)
    with pytest.raises(UrlExpiredError):
        stager(tmp_path, max_url_refreshes=0).stage(target, FixedUrl(stale))
    stager(tmp_path).stage(target, type("L", (), {"url_for": lambda self, t, fresh=False:
                                                   stale if not fresh else locator.url_for(t, True)})())
    assert locator.fresh_calls == 1
    assert_staged(tmp_path, target, payload)


def test_file_source(tmp_path: Path, payload: bytes) -> None:
    target = make_target(payload)
    repo = tmp_path / "repo"
    (repo / target.store_key).parent.mkdir(parents=True)
    (repo / target.store_key).write_bytes(payload)
    stager(tmp_path / "dev").stage(target, BaseUrlLocator(repo.as_uri()))
    assert_staged(tmp_path / "dev", target, payload)


def test_slow_retrieval_and_deadline(tmp_path: Path, payload: bytes) -> None:
    target = make_target(payload)
    with serve({"m": payload}, Faults(trickle_bytes_per_s=50_000)) as server:
        with pytest.raises(SlowRetrievalError, match="below the minimum"):
            stager(tmp_path, min_speed_bytes_per_s=500_000, min_speed_grace_s=0.5).stage(
                target, FixedUrl(server.url("m")))
        with pytest.raises(SlowRetrievalError, match="deadline"):
            stager(tmp_path, deadline_s=0.5, min_speed_bytes_per_s=0).stage(target, FixedUrl(server.url("m")))


@pytest.fixture
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"needs permission to mount a 4 MiB tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_refused_before_the_first_byte(small_fs: Path, payload: bytes) -> None:
    target = make_target(payload)
    with serve({"m": payload}) as server:
        with pytest.raises(DiskSpaceError, match="bytes free"):
            stager(small_fs).stage(target, FixedUrl(server.url("m")))
        assert server.requests == []
    assert list((small_fs / "staging").iterdir()) == []


def test_disk_filling_up_mid_download_aborts_cleanly(small_fs: Path) -> None:
    data = os.urandom(3 * MIB)
    target = make_target(data)
    filler = small_fs / "filler"

    def fill(position: int, length: int) -> None:
        if not filler.exists():  # another process takes the rest of the disk
            with open(filler, "wb") as f, contextlib.suppress(OSError):
                f.write(b"\x00" * (4 * MIB))

    with serve({"m": data}) as server, pytest.raises(DiskSpaceError, match="filled up"):
        stager(small_fs, chunk_bytes=256 * 1024).stage(target, FixedUrl(server.url("m")), progress=fill)
    assert list((small_fs / "staging").iterdir()) == []


def test_partial_file_with_lost_writes_gets_one_clean_download(tmp_path: Path, payload: bytes) -> None:
    """After a power cut unsynced blocks can read back as zeros: the resumed hash fails, one retry fixes it."""
    target = make_target(payload)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / f"{target.sha256}.part").write_bytes(b"\x00" * (2 * MIB))
    with serve({"m": payload}) as server:
        result = stager(tmp_path).stage(target, FixedUrl(server.url("m")))
        assert [r for _, r in server.requests] == [f"bytes={2 * MIB}-", None]
    assert result.resumed_from == 2 * MIB
    assert_staged(tmp_path, target, payload)


def test_full_model_disk_fails_the_update_and_keeps_the_old_model(small_fs: Path, tmp_path: Path) -> None:
    from agent.state import Status
    from tests.agent.fakes import Repo, make_engine, variant

    repo = Repo(tmp_path / "repo")
    staging = StagingConfig(reserve_bytes=256 * 1024)
    v1 = repo.plan(repo.release("digits", "1", ["ort-fp32.onnx"]))
    assert make_engine(small_fs, repo, staging=staging).apply(v1).status is Status.SUCCESS
    big = repo.put(*variant("digits", "2", "ort-fp32.onnx", os.urandom(6 * MIB)))
    golden = [t for t in repo.release("digits", "2", []) if t.kind == "golden"]
    outcome = make_engine(small_fs, repo, staging=staging).apply(repo.plan([big, *golden]))
    assert outcome.status is Status.FAILURE and outcome.reason is not None
    assert outcome.reason.startswith("download_failed: disk_full")
    slots = FileSlotStore(small_fs)
    current = slots.current()
    assert current is not None and current.target == "models/digits/1/ort-fp32.onnx" and slots.verify(current)
    assert list((small_fs / "staging").iterdir()) == []


def _ov_package(tmp: Path, members: list[tuple[str, bytes]]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_openvino_package_is_unpacked_into_the_slot_and_loads(tmp_path: Path, digits_mlp: object) -> None:
    """The build pipeline's OpenVINO IR package, staged, unpacked into the slot, loaded from model.xml."""
    import numpy as np
    import openvino as ov

    from agent.runtime import RuntimeOptions, loader_for
    from agent.slots import ModelRef
    from agent.staging.packages import entry_for

    sample = digits_mlp
    ir = tmp_path / "ir"
    ov.save_model(ov.convert_model(str(sample.path)), str(ir / "model.xml"))  # type: ignore[attr-defined]
    package = _ov_package(tmp_path, [("model.xml", (ir / "model.xml").read_bytes()),
                                     ("model.bin", (ir / "model.bin").read_bytes())])
    custom = {"kind": "variant", "runtime": "openvino", "format": "openvino-ir-tar"}
    target = SignedTarget("models/m/1/openvino-fp32", len(package), hashlib.sha256(package).hexdigest(), custom)
    with serve({"m": package}) as server:
        stager(tmp_path / "dev").stage(target, FixedUrl(server.url("m")))
    slots = FileSlotStore(tmp_path / "dev")
    ref = ModelRef(target.sha256, "openvino-fp32", target.name, "openvino", "fp32", "m", "1", "CPU",
                   entry_for(custom))
    assert slots.path(ref).name == "model.xml" and slots.verify(ref)
    session = loader_for("openvino").load(slots.path(ref), RuntimeOptions(intra_op_threads=1, device="CPU"))
    out = next(iter(session.run({session.inputs[0].name: sample.golden.inputs}).values()))  # type: ignore[attr-defined]
    assert np.mean(np.argmax(out, axis=1) == sample.golden.labels) == pytest.approx(sample.accuracy, abs=0.01)  # type: ignore[attr-defined]


@pytest.mark.parametrize("members", [
    [("model.xml", b"<xml/>")],
    [("model.xml", b"<xml/>"), ("model.bin", b"w"), ("extra.txt", b"x")],
    [("../model.xml", b"<xml/>"), ("model.bin", b"w")],
])
def test_malformed_packages_are_refused_and_nothing_is_adopted(tmp_path: Path, members: list[tuple[str, bytes]]
                                                               ) -> None:
    from agent.staging import PackageError

    package = _ov_package(tmp_path, members)
    target = SignedTarget("models/m/1/openvino-fp32", len(package), hashlib.sha256(package).hexdigest(),
                          {"kind": "variant", "runtime": "openvino", "format": "openvino-ir-tar"})
    with serve({"m": package}) as server, pytest.raises(PackageError):
        stager(tmp_path).stage(target, FixedUrl(server.url("m")))
    assert FileSlotStore(tmp_path).slots() == ()
    assert list((tmp_path / "staging").iterdir()) == []
    assert [p.name for p in (tmp_path / "models").iterdir()] == []
