"""The TensorRT engine cache: engines built on the device from an ONNX variant, kept per GPU and version.

A TensorRT engine is only valid for the TensorRT version and GPU it was built on, and building one takes
seconds to minutes, so the agent builds it once and caches it under a key of everything that decides
the engine's bytes:

    EngineKey(onnx_sha256, tensorrt_version, gpu_name, compute_capability, precision)
      -> <cache>/<sha256(key)[:32]>.engine  +  <same>.json (the key, the engine's sha256)

Entries are written atomically (temp file, fsync, rename); an engine whose bytes no longer match the
sha256 in its sidecar is rebuilt. A file lock serializes builds across processes (the gate's child and
the server may ask for the same engine at once). The least recently used entries beyond `max_entries`
are pruned.

Nothing here imports TensorRT: the builder is a port (`EngineBuilder`), so the cache logic is tested
with a fake builder on machines without a GPU.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from agent.runtime import ModelLoadError, Session


@dataclass(frozen=True)
class DeviceInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str

    @property
    def stem(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


class EngineBuilder(Protocol):
    def device_info(self) -> DeviceInfo: ...

    def build(self, onnx_path: Path, precision: str) -> bytes:
        """Serialized engine bytes; raise ModelLoadError when TensorRT cannot build this model."""

    def load(self, engine_path: Path) -> Session:
        """A session over a serialized engine built by `build` on this device."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EngineCache:
    def __init__(self, root: Path, max_entries: int = 8) -> None:
        self.root = root
        self.max_entries = max_entries
        root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def key_for(self, onnx_path: Path, info: DeviceInfo, precision: str) -> EngineKey:
        return EngineKey(file_sha256(onnx_path), info.tensorrt_version, info.gpu_name, info.compute_capability,
                         precision)

    def lookup(self, key: EngineKey) -> Path | None:
        engine = self.root / f"{key.stem}.engine"
        sidecar = self.root / f"{key.stem}.json"
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("key") != asdict(key) or not engine.exists() or file_sha256(engine) != meta.get("engine_sha256"):
            return None
        os.utime(engine)  # recently used: survives pruning
        return engine

    def get_or_build(self, onnx_path: Path, builder: EngineBuilder, precision: str) -> tuple[Path, bool]:
        """The engine for this model on this device, and whether it had to be built now."""
        key = self.key_for(onnx_path, builder.device_info(), precision)
        hit = self.lookup(key)
        if hit is not None:
            return hit, False
        with self._locked():
            hit = self.lookup(key)  # another process may have built it while we waited
            if hit is not None:
                return hit, False
            plan = builder.build(onnx_path, precision)
            if not plan:
                raise ModelLoadError(f"{onnx_path}: TensorRT produced an empty engine")
            engine = self.root / f"{key.stem}.engine"
            _write_atomic(engine, plan)
            meta = {"key": asdict(key), "engine_sha256": hashlib.sha256(plan).hexdigest(), "onnx": str(onnx_path)}
            _write_atomic(self.root / f"{key.stem}.json", json.dumps(meta, sort_keys=True).encode())
            self._prune(keep=key.stem)
        return engine, True

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("*.engine"), key=lambda p: p.stat().st_mtime, reverse=True)

    def _prune(self, keep: str) -> None:
        for engine in self.entries()[self.max_entries:]:
            if engine.stem != keep:
                engine.unlink(missing_ok=True)
                engine.with_suffix(".json").unlink(missing_ok=True)
