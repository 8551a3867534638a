"""`LocalArtifactStore`: artifacts as files in one folder — the default store, served over HTTP by
`controller/artifacts/http.py`.

Every write goes to a temporary file in the destination folder, is fsynced, then `os.replace`d over the
final name, and the folder is fsynced: a crash leaves either the old object or the new one, never a torn
file (readers such as devices fetching targets can run concurrently with publishing). Temporary names
start with '.', which `validate_key` refuses, so they never show in listings or collide with keys.

Presigned URLs need a `UrlSigner` pointing at the controller's artifact endpoint; without one,
`presign_*` raise `PresignNotConfigured`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from controller.artifacts.errors import (
    ArtifactNotFound,
    ArtifactTooLarge,
    PresignNotConfigured,
    RangeNotSatisfiable,
    StoreUnavailable,
)
from controller.artifacts.presign import UrlSigner
from controller.artifacts.store import STREAM_CHUNK_BYTES, ByteStream, validate_key, validate_prefix

_Fill = Callable[[BinaryIO], "int | None"]


class _RangeReader:
    """A file object limited to `length` bytes from its current position."""

    def __init__(self, handle: BinaryIO, length: int) -> None:
        self._handle = handle
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._handle.read(want)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> _RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArtifactStore:
    """Artifacts under `root` (created if missing)."""

    def __init__(self, root: Path | str, *, signer: UrlSigner | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.signer = signer

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        """The file that holds `key` (it may not exist). Raises `InvalidKey` for unsafe keys."""
        return self.root.joinpath(*validate_key(key).split("/"))

    # -- writing -------------------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda out: out.write(data), max_bytes=None)

    def write_stream(self, key: str, stream: BinaryIO, *, max_bytes: int | None = None) -> int:
        def copy(out: BinaryIO) -> int:
            total = 0
            while chunk := stream.read(STREAM_CHUNK_BYTES):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise ArtifactTooLarge(key, max_bytes)
                out.write(chunk)
            return total

        return self._write(key, copy, max_bytes=max_bytes)

    def _write(self, key: str, fill: _Fill, *, max_bytes: int | None) -> int:
        path = self.path_of(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise StoreUnavailable(f"cannot write artifact {key!r} under {self.root}: {e}") from e
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                written = fill(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if isinstance(e, OSError):
                raise StoreUnavailable(f"cannot write artifact {key!r} under {self.root}: {e}") from e
            raise
        return int(written) if written is not None else path.stat().st_size

    # -- reading -------------------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path_of(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFound(key) from None
        except OSError as e:
            raise StoreUnavailable(f"cannot read artifact {key!r}: {e}") from e

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def size(self, key: str) -> int:
        path = self.path_of(key)
        try:
            if not path.is_file():
                raise ArtifactNotFound(key)
            return path.stat().st_size
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None

    def open(self, key: str, *, start: int = 0, length: int | None = None) -> ByteStream:
        if start < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range start={start} length={length}")
        path = self.path_of(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFound(key) from None
        except OSError as e:
            raise StoreUnavailable(f"cannot open artifact {key!r}: {e}") from e
        size = os.fstat(handle.fileno()).st_size
        if start > 0 and start >= size:
            handle.close()
            raise RangeNotSatisfiable(key, start, size)
        handle.seek(start)
        return _RangeReader(handle, size - start if length is None else min(length, size - start))

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        # Walk only the folder that can hold matches: the prefix up to its last '/'.
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*base_key.split("/")) if base_key else self.root
        if not base.is_dir():
            return iter(())
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    # -- deleting ------------------------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreUnavailable(f"cannot delete artifact {key!r}: {e}") from e
        self._prune_empty_dirs(path.parent)
        return True

    def delete_prefix(self, prefix: str) -> int:
        if prefix == "":
            raise ValueError("refusing to delete the whole store: give a non-empty prefix")
        count = 0
        for key in list(self.list(prefix)):
            count += self.delete(key)
        if prefix.endswith("/"):
            folder = self.root.joinpath(*prefix.rstrip("/").split("/"))
            if folder.is_dir() and not any(p for p in folder.rglob("*") if p.is_file()):
                shutil.rmtree(folder, ignore_errors=True)
        return count

    def _prune_empty_dirs(self, folder: Path) -> None:
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    # -- presigning ----------------------------------------------------------------------------------

    def presign_get(self, key: str, *, expires_s: int) -> str:
        return self._signer().sign("GET", key, expires_s=expires_s)

    def presign_put(self, key: str, *, expires_s: int, content_length: int | None = None) -> str:
        return self._signer().sign("PUT", key, expires_s=expires_s, content_length=content_length)

    def _signer(self) -> UrlSigner:
        if self.signer is None:
            raise PresignNotConfigured(
                "this local artifact store has no URL signer: configure the controller's public artifact URL"
            )
        return self.signer
