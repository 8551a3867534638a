"""The capture spool: kept samples on disk until the controller has them, within a byte bound.

Each sample is two files in the spool folder, written atomically (temporary name, fsync, rename;
the metadata last, so a sample without metadata is an interrupted write and is deleted on open):

    <sample_id>.npz    arrays `input.<tensor>` and `output.<tensor>`, one row each
    <sample_id>.json   {"sample_id", "model", "version", "variant", "reason", "confidence",
                        "captured_at_s", "size_bytes", "sha256", "device_id"}

Bound: `max_bytes` over all sample files; adding past it deletes the oldest samples and counts them in
`dropped` (the newest data is the most useful for retraining). `clear()` is the privacy switch's
effect: everything not yet uploaded is deleted and counted in `discarded`.

Thread-safe: the capture writer adds while the uploader reads and removes (one lock around the index).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.capture.errors import CaptureError

_SAMPLE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass(frozen=True)
class SampleMeta:
    sample_id: str
    device_id: str
    model: str
    version: str
    variant: str
    reason: str
    confidence: float | None
    captured_at_s: float
    size_bytes: int
    sha256: str

    def upload_fields(self) -> dict[str, object]:
        """The metadata the controller's upload route takes."""
        fields = asdict(self)
        fields.pop("device_id")
        return fields


class CaptureSpool:
    def __init__(self, root: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.dropped = 0
        self.discarded = 0
        self.corrupt = 0
        self._metas: dict[str, SampleMeta] = {}
        self._lock = threading.RLock()
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._load()
        except OSError as e:
            raise CaptureError(f"cannot open capture spool {root}: {e}") from e

    def _load(self) -> None:
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for path in self.root.glob("*.json"):
            try:
                meta = SampleMeta(**json.loads(path.read_text()))
                if not _SAMPLE_ID.match(meta.sample_id) or path.stem != meta.sample_id:
                    raise ValueError("name does not match sample id")
                if (self.root / f"{meta.sample_id}.npz").stat().st_size != meta.size_bytes:
                    raise ValueError("sample file size differs from its metadata")
            except (OSError, ValueError, TypeError):
                self._delete(path.stem)
                self.corrupt += 1
                continue
            self._metas[meta.sample_id] = meta
        for npz in self.root.glob("*.npz"):
            if npz.stem not in self._metas:
                npz.unlink(missing_ok=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._metas)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(m.size_bytes for m in self._metas.values())

    def pending(self, limit: int | None = None) -> list[SampleMeta]:
        with self._lock:
            metas = sorted(self._metas.values(), key=lambda m: (m.captured_at_s, m.sample_id))
        return metas[:limit] if limit is not None else metas

    def read(self, sample_id: str) -> bytes:
        try:
            return (self.root / f"{sample_id}.npz").read_bytes()
        except OSError as e:
            raise CaptureError(f"cannot read sample {sample_id}: {e}") from e

    def add(self, meta_without_hash: SampleMeta, data: bytes) -> SampleMeta:
        if len(data) > self.max_bytes:
            self.dropped += 1
            raise CaptureError(f"sample of {len(data)} bytes exceeds the spool bound {self.max_bytes}")
        meta = SampleMeta(**{**asdict(meta_without_hash), "size_bytes": len(data),
                             "sha256": hashlib.sha256(data).hexdigest()})
        with self._lock:
            while self._metas and self.total_bytes + len(data) > self.max_bytes:
                self.remove(self.pending(1)[0].sample_id)
                self.dropped += 1
            _write_atomic(self.root / f"{meta.sample_id}.npz", data)
            _write_atomic(self.root / f"{meta.sample_id}.json", json.dumps(asdict(meta)).encode())
            self._metas[meta.sample_id] = meta
        return meta

    def remove(self, sample_id: str) -> None:
        with self._lock:
            self._metas.pop(sample_id, None)
            self._delete(sample_id)

    def clear(self) -> int:
        with self._lock:
            count = len(self._metas)
            for sample_id in list(self._metas):
                self.remove(sample_id)
            self.discarded += count
        return count

    def _delete(self, sample_id: str) -> None:
        # Metadata first: a crash in between leaves an orphan .npz, which `_load` removes.
        (self.root / f"{sample_id}.json").unlink(missing_ok=True)
        (self.root / f"{sample_id}.npz").unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise CaptureError(f"cannot write {path}: {e}") from e
