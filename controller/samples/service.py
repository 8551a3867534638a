"""Captured samples on the controller: upload URLs for devices, completion checks, listing.

    device ── POST /api/v1/device/samples/uploads {samples: [meta…]} ──▶ rows `pending`, presigned PUT URLs
    device ── PUT <url> (bytes) ──▶ artifact store (S3 or the controller's own /artifacts)
    device ── POST /api/v1/device/samples/complete {sample_ids} ──▶ size + SHA-256 checked ──▶ `uploaded`

Each URL is bound to the declared `size_bytes` (a signed Content-Length on S3, a signed `length` on
the controller's own store): the store refuses a body of any other size, so a device cannot use a
sample's URL to store gigabytes. The PUT must carry `Content-Length: <size_bytes>`.

Asking again for a sample that is still `pending` returns a *fresh* URL (the old one may have
expired: that is how a device recovers from a 403 on its PUT). A sample's metadata is fixed at its
first request; a later request with a different hash or size for the same id is refused, so a
device cannot swap the content behind an id. An object whose size or hash does not match is deleted
and the row stays `pending` for a retry.

Objects live under `samples/<model>/<version>/<device>/<sample_id>.npz`; keys are built only from
validated identifiers, never from free text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.base import utcnow
from controller.errors import Conflict, InvalidInput
from controller.samples.tables import SampleRow

IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
SAMPLE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
REASONS = frozenset({"random", "low_confidence", "disagreement"})
MAX_SAMPLE_BYTES = 8 * 1024 * 1024
DEFAULT_URL_TTL_S = 900


@dataclass(frozen=True)
class SampleMeta:
    sample_id: str
    model: str
    version: str
    variant: str
    reason: str
    confidence: float | None
    captured_at_s: float
    size_bytes: int
    sha256: str

    def check(self, max_bytes: int = MAX_SAMPLE_BYTES) -> None:
        if not SAMPLE_ID.match(self.sample_id):
            raise InvalidInput(f"sample_id must be 8-64 of [A-Za-z0-9_-], got {self.sample_id[:80]!r}")
        for name in ("model", "version", "variant"):
            if not IDENT.match(getattr(self, name)):
                raise InvalidInput(f"{name} {getattr(self, name)[:80]!r} is not a valid identifier")
        if self.reason not in REASONS:
            raise InvalidInput(f"reason must be one of {sorted(REASONS)}, got {self.reason[:40]!r}")
        if not 0 < self.size_bytes <= max_bytes:
            raise InvalidInput(f"size_bytes must be 1..{max_bytes}, got {self.size_bytes}")
        if not SHA256.match(self.sha256):
            raise InvalidInput("sha256 must be 64 lowercase hex digits")
        if self.confidence is not None and not 0.0 <= self.confidence <= 1.0:
            raise InvalidInput(f"confidence must be within [0, 1], got {self.confidence}")


def object_key(device_id: str, meta: SampleMeta) -> str:
    return f"samples/{meta.model}/{meta.version}/{device_id}/{meta.sample_id}.npz"


def request_uploads(db: Session, store: Any, device_id: str, samples: list[SampleMeta],
                    url_ttl_s: int = DEFAULT_URL_TTL_S) -> list[dict[str, Any]]:
    """Record (or find) each sample and return a fresh presigned PUT URL for every pending one."""
    out: list[dict[str, Any]] = []
    expires_at = utcnow() + timedelta(seconds=url_ttl_s)
    for meta in samples:
        meta.check()
        row = db.scalar(select(SampleRow).where(SampleRow.device_id == device_id,
                                                SampleRow.sample_id == meta.sample_id))
        if row is None:
            row = SampleRow(device_id=device_id, sample_id=meta.sample_id, model=meta.model, version=meta.version,
                            variant=meta.variant, reason=meta.reason, confidence=meta.confidence,
                            captured_at=datetime.fromtimestamp(meta.captured_at_s, tz=timezone.utc),
                            size_bytes=meta.size_bytes, sha256=meta.sha256, object_key=object_key(device_id, meta),
                            status="pending", created_at=utcnow())
            db.add(row)
        elif row.sha256 != meta.sha256 or row.size_bytes != meta.size_bytes:
            raise Conflict(f"sample {meta.sample_id} was declared with another size or hash")
        if row.status == "uploaded":
            out.append({"sample_id": meta.sample_id, "status": "uploaded", "url": None})
            continue
        pending: dict[str, Any] = {"sample_id": meta.sample_id, "status": "pending", "method": "PUT"}
        out.append({**pending,
                    "url": store.presign_put(row.object_key, expires_s=url_ttl_s,
                                             content_length=row.size_bytes),
                    "headers": {"Content-Type": "application/octet-stream"},
                    "expires_at": expires_at.isoformat()})
    db.commit()
    return out


def complete_uploads(db: Session, store: Any, device_id: str, sample_ids: list[str]) -> dict[str, list[str]]:
    """Check each uploaded object against its declared size and hash; mark the good ones `uploaded`."""
    result: dict[str, list[str]] = {"uploaded": [], "missing": [], "mismatch": [], "unknown": []}
    for sample_id in sample_ids:
        row = db.scalar(select(SampleRow).where(SampleRow.device_id == device_id, SampleRow.sample_id == sample_id))
        if row is None:
            result["unknown"].append(sample_id)
            continue
        if row.status == "uploaded":
            result["uploaded"].append(sample_id)
            continue
        if not store.exists(row.object_key):
            result["missing"].append(sample_id)
            continue
        data = store.read_bytes(row.object_key)
        if len(data) != row.size_bytes or hashlib.sha256(data).hexdigest() != row.sha256:
            store.delete(row.object_key)
            result["mismatch"].append(sample_id)
            continue
        row.status = "uploaded"
        row.uploaded_at = utcnow()
        result["uploaded"].append(sample_id)
    db.commit()
    return result


def list_samples(db: Session, *, model: str | None = None, since: datetime | None = None,
                 status: str | None = "uploaded", limit: int = 1000, offset: int = 0) -> list[SampleRow]:
    query = select(SampleRow).order_by(SampleRow.captured_at, SampleRow.id)
    if model is not None:
        query = query.where(SampleRow.model == model)
    if since is not None:
        query = query.where(SampleRow.captured_at >= since)
    if status is not None:
        query = query.where(SampleRow.status == status)
    return list(db.scalars(query.limit(limit).offset(offset)))


def row_dict(row: SampleRow) -> dict[str, Any]:
    return {"device_id": row.device_id, "sample_id": row.sample_id, "model": row.model, "version": row.version,
            "variant": row.variant, "reason": row.reason, "confidence": row.confidence,
            "captured_at": row.captured_at.isoformat(), "size_bytes": row.size_bytes, "sha256": row.sha256,
            "object_key": row.object_key, "status": row.status}
