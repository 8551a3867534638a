"""The `ArtifactStore` port: what the controller needs from a place that keeps bytes.

Two backends implement it: `LocalArtifactStore` (a folder; the default) and `S3ArtifactStore` (boto3).
The first three methods (`write_bytes`, `read_bytes`, `exists`) are the structural store protocol of the
image-repository writer in `manifests/`, so the TUF repository lives in whichever store is configured.

Keys are '/'-separated relative paths made of a small character set. `validate_key` is the only gate:
no empty, '.' or '..' segments, no segment starting with '.', no backslash or control characters, at most
`MAX_KEY_CHARS`. This keeps a local store inside its folder and keeps S3 keys portable; temporary files of
the local store start with '.', so they can never collide with a key.

The store deliberately knows nothing about models, releases or TUF: those live in `controller/build` and
`manifests/`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO, Protocol, runtime_checkable

from controller.artifacts.errors import InvalidKey

MAX_KEY_CHARS = 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9_+=@,~-][A-Za-z0-9._+=@,~-]*$")

#: Chunk size used when streaming between stores, files and HTTP bodies.
STREAM_CHUNK_BYTES = 1024 * 1024


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative artifact key, else raise `InvalidKey`."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("artifact key must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidKey(f"artifact key is {len(key)} characters, the limit is {MAX_KEY_CHARS}")
    for segment in key.split("/"):
        if not _SEGMENT.match(segment):
            raise InvalidKey(
                f"artifact key {key!r} has an invalid segment {segment!r}: expected letters, digits and "
                "'._+=@,~-', not starting with '.'"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key prefix (it may end with '/' or in the middle of a segment)."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") or "x")
    return prefix


@runtime_checkable
class ByteStream(Protocol):
    """A readable stream of an artifact's bytes (or a byte range of it). Close it when done."""

    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class ArtifactStore(Protocol):
    """Where artifacts and the image repository live. All methods are blocking; call them off the event
    loop (e.g. `starlette.concurrency.run_in_threadpool`) from async code."""

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any previous object atomically."""
        ...

    def write_stream(self, key: str, stream: BinaryIO, *, max_bytes: int | None = None) -> int:
        """Store everything `stream` yields; return the byte count. Over `max_bytes` raises
        `ArtifactTooLarge` and leaves nothing (and any previous object unchanged)."""
        ...

    def read_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def open(self, key: str, *, start: int = 0, length: int | None = None) -> ByteStream:
        """Stream the object, or `length` bytes from `start` (a Range GET on S3)."""
        ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> bool:
        """Remove the object; return whether it existed. Deleting a missing key is not an error, so
        cleanup after a failed upload can run twice."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix`; return how many."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (plain string prefix, as in S3), in sorted order."""
        ...

    def presign_get(self, key: str, *, expires_s: int) -> str:
        """A URL anyone holding it can GET (with Range) until it expires."""
        ...

    def presign_put(self, key: str, *, expires_s: int, content_length: int | None = None) -> str:
        """A URL anyone holding it can PUT one object to until it expires. Send
        `Content-Type: application/octet-stream`. With `content_length`, the URL accepts only a body
        of exactly that many bytes (sent with that `Content-Length`): a holder cannot store more, or
        less, than was declared when the URL was issued."""
        ...
