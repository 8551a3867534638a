"""Where staged bytes come from: the `Fetcher` port and its urllib implementation, plus URL locators.

`UrlFetcher` speaks HTTP(S) through `urllib` (no extra client on the device) and reads `file://`
URLs directly; both honour a start offset so the stager can resume. A `TargetLocator` turns a signed
target into a URL and, for S3 presigned URLs that expire, into a fresh one on request.

URLs may carry credentials (presigned query strings, user:password@host); `redact_url` is what every
log line and error message shows instead.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Protocol

from agent.staging.errors import SourceError, TransferError, UrlExpiredError
from manifests.verify import SignedTarget

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def redact_url(url: str) -> str:
    """scheme://host[:port]/path, without user info, query or fragment (where credentials hide)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    suffix = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{parts.path}{suffix}"


class FetchStream(Protocol):
    """An open body. `start` is the offset of its first byte (0 when a server ignored Range)."""

    start: int
    announced_length: int | None  # bytes the source says it will send from `start`, if it says

    def readinto(self, buffer: memoryview) -> int:
        """Fill up to `len(buffer)` bytes with what one receive brings, never waiting to fill it all.

        Returns the count, 0 at the end of the body. Reading into the caller's buffer lets the stager
        recycle a few large buffers instead of allocating a bytes object per receive.
        """

    def close(self) -> None: ...


class Fetcher(Protocol):
    def open(self, url: str, offset: int, timeout_s: float) -> FetchStream: ...


class _Stream:
    def __init__(self, body: io.BufferedIOBase | http.client.HTTPResponse, start: int, announced_length: int | None) -> None:
        self.body = body
        self.start = start
        self.announced_length = announced_length

    def readinto(self, buffer: memoryview) -> int:
        try:
            body = self.body
            if isinstance(body, http.client.HTTPResponse):
                return self._readinto_response(body, buffer)
            return body.readinto(buffer) or 0
        except (OSError, http.client.HTTPException) as e:
            raise TransferError(f"connection broke while reading: {e}") from e

    @staticmethod
    def _readinto_response(body: http.client.HTTPResponse, buffer: memoryview) -> int:
        """One receive's worth, like `HTTPResponse.read1` but into `buffer`.

        `HTTPResponse.readinto` would block until the whole buffer is full, so a server trickling one
        byte at a time would never let the stager check its deadline or minimum speed. Chunked bodies
        go through `read1` (rare for artifacts, which carry a Content-Length).
        """
        if body.chunked or body.fp is None:
            data = body.read1(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        if body.length is not None:
            buffer = buffer[:body.length]
        if not buffer:
            return 0
        n = body.fp.readinto1(buffer)
        if n == 0:
            body.close()
        elif body.length is not None:
            body.length -= n
        return n

    def close(self) -> None:
        self.body.close()


class UrlFetcher:
    """HTTP(S) via urllib with `Range: bytes=<offset>-`, and `file://` with a seek."""

    def open(self, url: str, offset: int, timeout_s: float) -> FetchStream:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme == "file":
            return self._open_file(url, offset)
        if scheme not in ("http", "https"):
            raise SourceError(f"unsupported URL scheme {scheme!r} in {redact_url(url)}")
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = urllib.request.urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 403:
                raise UrlExpiredError(f"403 from {redact_url(url)}: the URL expired or was refused") from e
            if e.code == 416:
                raise TransferError(f"416 from {redact_url(url)}: range {offset}- not satisfiable",
                                    range_not_satisfiable=True) from e
            if e.code >= 500 or e.code in (408, 429):
                raise TransferError(f"{e.code} from {redact_url(url)}") from e
            raise SourceError(f"{e.code} from {redact_url(url)}") from e
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise TransferError(f"cannot reach {redact_url(url)}: {e}") from e
        length_header = response.headers.get("Content-Length")
        announced = int(length_header) if length_header and length_header.isdigit() else None
        start = 0
        if response.status == 206:
            m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != offset:
                response.close()
                raise TransferError(
                    f"{redact_url(url)} answered range {response.headers.get('Content-Range')!r}, "
                    f"expected bytes {offset}-", restart=True)
            start = offset
        return _Stream(response, start, announced)

    @staticmethod
    def _open_file(url: str, offset: int) -> FetchStream:
        path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
        try:
            f = open(path, "rb")  # noqa: SIM115 - the stream owns the file and closes it
        except FileNotFoundError as e:
            raise SourceError(f"{url}: no such file") from e
        except OSError as e:
            raise TransferError(f"{url}: {e}") from e
        size = os.fstat(f.fileno()).st_size
        f.seek(min(offset, size))
        return _Stream(f, min(offset, size), size - min(offset, size))


class TargetLocator(Protocol):
    """Where a target's bytes can be fetched; `fresh=True` asks for a new URL (an expired presign)."""

    def url_for(self, target: SignedTarget, fresh: bool = False) -> str: ...


class BaseUrlLocator:
    """Targets under one base URL by their store key (`targets/models/<m>/<v>/<sha256>.<variant>`)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def url_for(self, target: SignedTarget, fresh: bool = False) -> str:
        return f"{self.base_url}/{urllib.parse.quote(target.store_key)}"
