"""The object-store port the image repository is written through, a local-folder store, and a TUF fetcher
that reads from any such store.

The controller's artifact stores (local folder, S3) satisfy `ObjectStore` structurally; manifests only
needs these three calls. Keys are '/'-separated relative paths (`metadata/3.snapshot.json`,
`targets/models/...`). `LocalFolderStore` refuses keys that would leave its folder: the same rule the
target-name check applies, enforced again where bytes touch the disk.

`StoreFetcher` lets `tuf.ngclient.Updater` read a repository straight from a store (tests, a controller
verifying its own repository, an agent syncing from a mounted folder); over the network the agent uses
python-tuf's own urllib3 fetcher.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface

STORE_URL_PREFIX = "store:///"
_CHUNK_BYTES = 64 * 1024


@runtime_checkable
class ObjectStore(Protocol):
    """Minimal byte store the image repository writer and StoreFetcher need."""

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def read_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...


def check_store_key(key: str) -> str:
    """Refuse keys that are absolute, empty, contain `..`/`.` parts, backslashes or NUL."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ValueError(f"store key {key!r} is not a plain relative path")
    return key


class LocalFolderStore:
    """An ObjectStore over a local folder; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_store_key(key).split("/"))

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


class StoreFetcher(FetcherInterface):
    """python-tuf fetcher over an ObjectStore: URL `store:///<key>` reads `<key>`; absent keys are 404."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(STORE_URL_PREFIX):
            raise DownloadHTTPError(f"{url} is not a {STORE_URL_PREFIX} URL", 400)
        key = url[len(STORE_URL_PREFIX) :]
        try:
            check_store_key(key)
        except ValueError as e:
            raise DownloadHTTPError(str(e), 400) from e
        if not self.store.exists(key):
            raise DownloadHTTPError(f"{key} not found", 404)
        data = self.store.read_bytes(key)
        return iter([data[i : i + _CHUNK_BYTES] for i in range(0, len(data), _CHUNK_BYTES)] or [b""])
