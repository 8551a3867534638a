"""`S3ArtifactStore`: artifacts in an S3 bucket through boto3 (AWS S3, MinIO, SeaweedFS, Ceph RGW...).

- Small writes are one `PutObject`; streams go through boto3's managed transfer, which switches to a
  multipart upload above `multipart_threshold_bytes` (parts of `multipart_chunk_bytes`, uploaded by a few
  threads) and aborts the multipart upload if the stream fails, so no orphan parts are billed.
- `open(start, length)` is a ranged `GetObject`, which is what the HTTP endpoint and resumable device
  downloads need.
- Presigned GET / PUT URLs are SigV4 query-signed by boto3: the bucket checks them, the controller is not
  in the data path. Devices then download models and upload captured samples straight from / to S3. A
  PUT URL issued with `content_length` has the Content-Length header signed into it, so the bucket
  refuses (403) a body of any other size.

Objects live under an optional key `prefix` inside the bucket, so one bucket can hold several
installations. Errors from botocore are wrapped into the store's error tree at this boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from controller.artifacts.errors import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactTooLarge,
    RangeNotSatisfiable,
    StoreUnavailable,
)
from controller.artifacts.presign import check_content_length
from controller.artifacts.store import ByteStream, validate_key, validate_prefix

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
#: S3 refuses parts smaller than this, except the last one.
MIN_PART_BYTES = 5 * 1024 * 1024


class _LimitedReader:
    """Wraps a stream and raises `ArtifactTooLarge` once more than `max_bytes` were read from it."""

    def __init__(self, stream: BinaryIO, key: str, max_bytes: int | None) -> None:
        self._stream = stream
        self._key = key
        self._max_bytes = max_bytes
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        if self._max_bytes is not None and self.count > self._max_bytes:
            raise ArtifactTooLarge(self._key, self._max_bytes)
        return data


class _BodyStream:
    """botocore's StreamingBody behind the `ByteStream` port."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._body.read() if size < 0 else self._body.read(size)
        return data

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _BodyStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_not_found(e: ClientError) -> bool:
    error = e.response.get("Error", {})
    status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return str(error.get("Code", "")) in _NOT_FOUND_CODES or status == "404"


class S3ArtifactStore:
    """Artifacts in `bucket` under `prefix`, through a boto3 S3 client."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str = "",
        multipart_threshold_bytes: int = 64 * 1024 * 1024,
        multipart_chunk_bytes: int = 16 * 1024 * 1024,
        max_upload_threads: int = 4,
    ) -> None:
        if multipart_chunk_bytes < MIN_PART_BYTES:
            raise ValueError(f"multipart_chunk_bytes must be at least {MIN_PART_BYTES} (an S3 limit)")
        if prefix:
            validate_prefix(prefix)
            prefix = prefix.rstrip("/") + "/"
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunk_bytes,
            max_concurrency=max_upload_threads,
        )

    @classmethod
    def connect(
        cls,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str = "us-east-1",
        prefix: str = "",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        **kwargs: Any,
    ) -> S3ArtifactStore:
        """Build the boto3 client (SigV4, path-style addressing when an endpoint is given, bounded retries)."""
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
            config=config,
        )
        return cls(client, bucket, prefix=prefix, **kwargs)

    def __repr__(self) -> str:
        return f"S3ArtifactStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _wrap(self, action: str, key: str, e: Exception) -> ArtifactError:
        if isinstance(e, ClientError) and _is_not_found(e):
            return ArtifactNotFound(key)
        return StoreUnavailable(f"S3 {action} of {key!r} in bucket {self.bucket!r} failed: {e}")

    # -- writing -------------------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as e:
            raise self._wrap("put", key, e) from e

    def write_stream(self, key: str, stream: BinaryIO, *, max_bytes: int | None = None) -> int:
        reader = _LimitedReader(stream, key, max_bytes)
        try:
            self.client.upload_fileobj(reader, self.bucket, self._key(key), Config=self.transfer_config)
        except ArtifactTooLarge:
            raise
        except (ClientError, BotoCoreError) as e:
            raise self._wrap("upload", key, e) from e
        except Exception as e:
            # s3transfer re-raises a failing read from its worker threads; our own limit error may arrive
            # wrapped, so look for it in the chain before calling it a transport failure.
            cause: BaseException | None = e
            while cause is not None:
                if isinstance(cause, ArtifactTooLarge):
                    raise cause from None
                cause = cause.__cause__ or cause.__context__
            raise
        return reader.count

    # -- reading -------------------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        stream = self.open(key)
        try:
            return stream.read()
        finally:
            stream.close()

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ArtifactNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as e:
            raise self._wrap("head", key, e) from e
        return int(head["ContentLength"])

    def open(self, key: str, *, start: int = 0, length: int | None = None) -> ByteStream:
        if start < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range start={start} length={length}")
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if length == 0:
            # A zero-length range cannot be expressed in a Range header.
            size = self.size(key)
            if start > 0 and start >= size:
                raise RangeNotSatisfiable(key, start, size)
            return _BodyStream(_Empty())
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            params["Range"] = f"bytes={start}-{end}"
        try:
            response = self.client.get_object(**params)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvalidRange":
                raise RangeNotSatisfiable(key, start, self.size(key)) from e
            raise self._wrap("get", key, e) from e
        except BotoCoreError as e:
            raise self._wrap("get", key, e) from e
        return _BodyStream(response["Body"])

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as e:
            raise self._wrap("list", prefix, e) from e
        return iter(sorted(keys))

    # -- deleting ------------------------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        existed = self.exists(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as e:
            raise self._wrap("delete", key, e) from e
        return existed

    def delete_prefix(self, prefix: str) -> int:
        if prefix == "":
            raise ValueError("refusing to delete the whole store: give a non-empty prefix")
        keys = list(self.list(prefix))
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self.prefix + k} for k in keys[start : start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (ClientError, BotoCoreError) as e:
                raise self._wrap("delete", prefix, e) from e
        return len(keys)

    # -- presigning ----------------------------------------------------------------------------------

    def presign_get(self, key: str, *, expires_s: int) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s
        )
        return url

    def presign_put(self, key: str, *, expires_s: int, content_length: int | None = None) -> str:
        # With ContentLength in Params, botocore signs the Content-Length header
        # (X-Amz-SignedHeaders=content-length;content-type;host): the server recomputes the signature
        # from the request's actual length, so any other body size fails with 403 SignatureDoesNotMatch.
        check_content_length(content_length)
        params: dict[str, Any] = {
            "Bucket": self.bucket, "Key": self._key(key), "ContentType": "application/octet-stream"
        }
        if content_length is not None:
            params["ContentLength"] = content_length
        url: str = self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_s)
        return url


class _Empty:
    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass
