"""Building the configured `ArtifactStore` from a URL, so settings carry one string.

file:///var/lib/edgefleet/artifacts      LocalArtifactStore (a relative path: file:relative/dir)
s3://bucket/optional/prefix              S3ArtifactStore; endpoint and keys come as arguments
                                         (from settings), never inside the URL, so logs stay clean
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from controller.artifacts.local import LocalArtifactStore
from controller.artifacts.presign import UrlSigner
from controller.artifacts.s3 import S3ArtifactStore
from controller.artifacts.store import ArtifactStore


def store_from_url(
    url: str,
    *,
    signer: UrlSigner | None = None,
    s3_endpoint_url: str | None = None,
    s3_access_key_id: str | None = None,
    s3_secret_access_key: str | None = None,
    s3_region: str = "us-east-1",
) -> ArtifactStore:
    """The store named by `url`. `signer` is used by the local store only (S3 presigns itself)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        raw = (
            unquote(parts.netloc + parts.path)
            if parts.netloc not in ("", "localhost")
            else unquote(parts.path)
        )
        if not raw:
            raise ValueError(f"artifact store URL {url!r} names no folder")
        return LocalArtifactStore(Path(raw), signer=signer)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"artifact store URL {url!r} names no bucket: expected s3://bucket[/prefix]")
        return S3ArtifactStore.connect(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint_url=s3_endpoint_url,
            access_key_id=s3_access_key_id,
            secret_access_key=s3_secret_access_key,
            region=s3_region,
        )
    raise ValueError(f"unsupported artifact store URL {url!r}: expected file://PATH or s3://BUCKET[/PREFIX]")
