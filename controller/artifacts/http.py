"""Serving an `ArtifactStore` over HTTP: a FastAPI router the controller app mounts (e.g. at
`/artifacts`).

    GET  /<key>   the object; a single `Range: bytes=a-b | a- | -n` gets 206 + Content-Range,
                  an unsatisfiable one 416; several ranges are ignored (full 200, which RFC 9110 allows)
    HEAD /<key>   the same headers, no body
    PUT  /<key>   store the request body (presigned PUT only), at most `max_upload_bytes`; a URL
                  signed with `length` takes exactly that many bytes (413 larger, 400 smaller)

Who may read: keys under one of `public_prefixes` (the TUF image repository: metadata and targets are
signed, so anyone may fetch them; their integrity never depends on this endpoint) or a request carrying a
valid presigned GET signature. Writes always need a presigned PUT signature. Operator routes with tokens
live in `controller/api`; this router deliberately has no notion of users.

Errors are raised as `HTTPException`, so the application's single error handler shapes them.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import Annotated, BinaryIO, cast

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from controller.api.errors import error_responses
from controller.artifacts.errors import ArtifactNotFound, ArtifactTooLarge, InvalidKey, StoreUnavailable
from controller.artifacts.presign import SignatureRejected, UrlSigner
from controller.artifacts.store import STREAM_CHUNK_BYTES, ArtifactStore, ByteStream, validate_key

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: Uploads are spooled in memory up to this size, then on disk.
SPOOL_MEMORY_BYTES = 8 * 1024 * 1024


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) of a single byte range within an object of `size` bytes; None for "whole object".

    Raises ValueError for a syntactically valid range that cannot be satisfied (the caller answers 416).
    Malformed or multi-range headers mean "whole object", as RFC 9110 lets a server ignore Range.
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last n bytes
        n = int(last)
        if n == 0:
            raise ValueError("empty suffix range")
        n = min(n, size)
        return size - n, n
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise ValueError(f"range start {start} at or past the end of {size} bytes")
    return start, end - start + 1


def check_declared_length(declared: str | None, bound: int | None, max_upload_bytes: int) -> None:
    """Refuse an upload by its Content-Length header before reading it: over the endpoint's limit
    (413), or not the exact length a length-bound URL was issued for (413 when larger, 400 when
    smaller). A missing header (chunked body) is checked while streaming instead."""
    if declared is None:
        return
    if not (declared.isascii() and declared.isdigit()):
        raise HTTPException(status_code=400, detail=f"invalid Content-Length {declared[:32]!r}")
    size = int(declared)
    if size > max_upload_bytes:
        raise HTTPException(status_code=413, detail=f"upload is over the limit of {max_upload_bytes} bytes")
    if bound is not None and size != bound:
        raise HTTPException(
            status_code=413 if size > bound else 400,
            detail=f"Content-Length {size} differs from the {bound} bytes this URL was issued for",
        )


def _iterate(stream: ByteStream) -> Iterator[bytes]:
    try:
        while chunk := stream.read(STREAM_CHUNK_BYTES):
            yield chunk
    finally:
        stream.close()


def artifact_router(
    store: ArtifactStore,
    *,
    signer: UrlSigner | None,
    public_prefixes: Sequence[str] = ("repository/",),
    max_upload_bytes: int = 256 * 1024 * 1024,
) -> APIRouter:
    """A router serving `store`. `signer` must be the one the store presigns with (or None: only public
    reads, no uploads)."""
    router = APIRouter(tags=["artifacts"])

    def authorize(
        method: str, key: str, expires: str | None, signature: str | None, length: str | None = None
    ) -> int | None:
        """Check the URL; returns the body length a PUT URL is bound to (None: not bound)."""
        try:
            validate_key(key)
        except InvalidKey as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        if method == "GET" and signature is None and any(key.startswith(p) for p in public_prefixes):
            return None
        if signer is None:
            raise HTTPException(status_code=403, detail="presigned URLs are not enabled on this endpoint")
        try:
            return signer.verify(method, key, expires, signature, length)
        except SignatureRejected as e:
            raise HTTPException(status_code=403, detail=f"presigned URL refused: {e}") from e

    async def serve(key: str, range_header: str | None, with_body: bool) -> Response:
        try:
            size = await run_in_threadpool(store.size, key)
        except ArtifactNotFound as e:
            raise HTTPException(status_code=404, detail=str(e)) from e
        except StoreUnavailable as e:
            raise HTTPException(status_code=503, detail=str(e)) from e
        try:
            span = parse_range(range_header, size)
        except ValueError as e:
            raise HTTPException(
                status_code=416, detail=str(e), headers={"Content-Range": f"bytes */{size}"}
            ) from e
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start, length = (0, size) if span is None else span
        headers["Content-Length"] = str(length)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
        if not with_body:
            return Response(status_code=status, headers=headers)
        try:
            stream = await run_in_threadpool(store.open, key, start=start, length=length)
        except ArtifactNotFound as e:  # deleted between size() and open()
            raise HTTPException(status_code=404, detail=str(e)) from e
        except StoreUnavailable as e:
            raise HTTPException(status_code=503, detail=str(e)) from e
        return StreamingResponse(_iterate(stream), status_code=status, headers=headers)

    @router.get(
        "/{key:path}",
        summary="Download an artifact (Range supported)",
        responses=error_responses(400, 403, 404, 416, 503),
    )
    async def get_artifact(
        key: str,
        range_header: Annotated[str | None, Header(alias="Range")] = None,
        expires: Annotated[str | None, Query()] = None,
        signature: Annotated[str | None, Query()] = None,
    ) -> Response:
        authorize("GET", key, expires, signature)
        return await serve(key, range_header, with_body=True)

    @router.head("/{key:path}", include_in_schema=False)
    async def head_artifact(
        key: str,
        range_header: Annotated[str | None, Header(alias="Range")] = None,
        expires: Annotated[str | None, Query()] = None,
        signature: Annotated[str | None, Query()] = None,
    ) -> Response:
        # A presigned GET URL also answers HEAD, as on S3.
        authorize("GET", key, expires, signature)
        return await serve(key, range_header, with_body=False)

    @router.put(
        "/{key:path}",
        status_code=201,
        summary="Upload through a presigned PUT URL",
        responses=error_responses(400, 403, 413, 503),
    )
    async def put_artifact(
        key: str,
        request: Request,
        expires: Annotated[str | None, Query()] = None,
        signature: Annotated[str | None, Query()] = None,
        length: Annotated[str | None, Query()] = None,
    ) -> dict[str, object]:
        if signature is None:
            raise HTTPException(status_code=403, detail="uploads need a presigned PUT URL")
        bound = authorize("PUT", key, expires, signature, length)
        limit = max_upload_bytes if bound is None else min(bound, max_upload_bytes)
        declared = request.headers.get("content-length")
        check_declared_length(declared, bound, max_upload_bytes)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise HTTPException(status_code=413, detail=f"upload is over the limit of {limit} bytes")
                await run_in_threadpool(spool.write, chunk)
            if bound is not None and received != bound:
                raise HTTPException(
                    status_code=400, detail=f"upload has {received} bytes, the URL was issued for {bound}"
                )
            spool.seek(0)
            try:
                written = await run_in_threadpool(
                    store.write_stream,
                    key,
                    cast(BinaryIO, spool),
                    max_bytes=max_upload_bytes,
                )
            except ArtifactTooLarge as e:
                raise HTTPException(status_code=413, detail=str(e)) from e
            except StoreUnavailable as e:
                raise HTTPException(status_code=503, detail=str(e)) from e
        return {"key": key, "size_bytes": written}

    return router
