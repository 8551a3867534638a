"""Uploading spooled samples through presigned PUT URLs the controller issues.

One round (`upload_round`), for up to `batch` of the oldest spooled samples:

    POST /api/v1/device/samples/uploads  {samples: [metadata…]}   → one fresh PUT URL per sample
    PUT  <url>  body = sample bytes                                 → object store (S3 or /artifacts)
         403 (expired or invalid URL) → ask for a fresh URL once, PUT again
    POST /api/v1/device/samples/complete {sample_ids}               → controller checks size + SHA-256
    samples the controller confirms are deleted from the spool; the rest stay for the next round

The HTTP transport is a port (`ControllerApi`, `ObjectPut`) so tests can use the real controller over
HTTP and the real S3; the built-in implementation uses `urllib` (no extra dependency on the device).
Device credentials are HTTP Basic `<device id>:<MQTT password>`, as the controller's device routes take.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.capture.errors import UploadError, UrlExpired
from agent.capture.spool import CaptureSpool, SampleMeta

MAX_RESPONSE_BYTES = 1024 * 1024


class ControllerApi(Protocol):
    def request_uploads(self, samples: Sequence[SampleMeta]) -> list[dict[str, Any]]: ...

    def complete(self, sample_ids: Sequence[str]) -> dict[str, list[str]]: ...


class ObjectPut(Protocol):
    def put(self, url: str, data: bytes, headers: Mapping[str, str]) -> None:
        """Raises UrlExpired on 403, UploadError on anything else that fails."""
        ...


@dataclass(frozen=True)
class HttpControllerApi:
    base_url: str
    device_id: str
    password: str
    timeout_s: float = 30.0

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        token = base64.b64encode(f"{self.device_id}:{self.password}".encode()).decode()
        request = urllib.request.Request(
            self.base_url.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 (configured URL)
                data = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise UploadError(f"controller answered {e.code} to {path}: {e.read(2048)!r}") from e
        except (urllib.error.URLError, OSError) as e:
            raise UploadError(f"controller unreachable for {path}: {e}") from e
        if len(data) > MAX_RESPONSE_BYTES:
            raise UploadError(f"controller answer to {path} exceeds {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(data)
        except ValueError as e:
            raise UploadError(f"controller answer to {path} is not JSON") from e

    def request_uploads(self, samples: Sequence[SampleMeta]) -> list[dict[str, Any]]:
        answer = self._post("/api/v1/device/samples/uploads", {"samples": [s.upload_fields() for s in samples]})
        uploads = answer.get("uploads") if isinstance(answer, dict) else None
        if not isinstance(uploads, list) or not all(isinstance(u, dict) for u in uploads):
            raise UploadError("controller answer has no `uploads` list")
        return uploads

    def complete(self, sample_ids: Sequence[str]) -> dict[str, list[str]]:
        answer = self._post("/api/v1/device/samples/complete", {"sample_ids": list(sample_ids)})
        if not isinstance(answer, dict) or not isinstance(answer.get("uploaded"), list):
            raise UploadError("controller answer has no `uploaded` list")
        return {k: [str(x) for x in v] for k, v in answer.items() if isinstance(v, list)}


class HttpObjectPut:
    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s

    def put(self, url: str, data: bytes, headers: Mapping[str, str]) -> None:
        if not url.startswith(("http://", "https://")):
            raise UploadError(f"refusing a non-HTTP upload URL {url[:40]!r}")
        request = urllib.request.Request(url, data=data, method="PUT", headers=dict(headers))
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                response.read(4096)
        except urllib.error.HTTPError as e:
            if e.code == 403:
                raise UrlExpired(f"object store refused the presigned URL ({e.code})") from e
            raise UploadError(f"object store answered {e.code}") from e
        except (urllib.error.URLError, OSError) as e:
            raise UploadError(f"object store unreachable: {e}") from e


class SampleUploader:
    def __init__(self, spool: CaptureSpool, api: ControllerApi, objects: ObjectPut | None = None,
                 batch: int = 16) -> None:
        self.spool = spool
        self.api = api
        self.objects = objects or HttpObjectPut()
        self.batch = batch
        self.stats: Counter[str] = Counter()

    def upload_round(self) -> int:
        """Upload up to `batch` samples; returns how many the controller confirmed. Raises UploadError
        when the controller cannot be reached (nothing is lost: the samples stay spooled)."""
        metas = self.spool.pending(self.batch)
        if not metas:
            return 0
        by_id = {m.sample_id: m for m in metas}
        put_ok: list[str] = []
        for upload in self.api.request_uploads(metas):
            sample_id = str(upload.get("sample_id"))
            if sample_id not in by_id:
                continue
            if upload.get("status") == "uploaded":
                put_ok.append(sample_id)
                continue
            try:
                self._put_with_refresh(by_id[sample_id], upload)
                put_ok.append(sample_id)
            except UploadError as e:
                self.stats["put_failures"] += 1
                self.stats[f"last_error:{type(e).__name__}"] += 1
        if not put_ok:
            return 0
        result = self.api.complete(put_ok)
        confirmed = [s for s in result.get("uploaded", []) if s in by_id]
        for sample_id in confirmed:
            self.spool.remove(sample_id)
        self.stats["uploaded"] += len(confirmed)
        self.stats["mismatch"] += len(result.get("mismatch", []))
        return len(confirmed)

    def _put_with_refresh(self, meta: SampleMeta, upload: Mapping[str, Any]) -> None:
        data = self.spool.read(meta.sample_id)
        try:
            self.objects.put(_url(upload), data, _headers(upload))
            return
        except UrlExpired:
            self.stats["urls_refreshed"] += 1
        fresh = [u for u in self.api.request_uploads([meta]) if u.get("sample_id") == meta.sample_id]
        if not fresh:
            raise UploadError(f"controller gave no fresh URL for {meta.sample_id}")
        if fresh[0].get("status") == "uploaded":
            return
        self.objects.put(_url(fresh[0]), data, _headers(fresh[0]))


def _url(upload: Mapping[str, Any]) -> str:
    url = upload.get("url")
    if not isinstance(url, str) or not url:
        raise UploadError("upload entry has no URL")
    return url


def _headers(upload: Mapping[str, Any]) -> dict[str, str]:
    headers = upload.get("headers") or {}
    if not isinstance(headers, dict):
        raise UploadError("upload headers must be an object")
    return {str(k): str(v) for k, v in headers.items()
            if str(k).lower() in ("content-type", "content-md5", "x-amz-checksum-sha256")}
