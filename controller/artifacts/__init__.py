"""Artifact storage: where uploaded models, built variants, golden sets, captured samples and the TUF
image repository live.

    ArtifactStore (protocol, store.py)
    ├── LocalArtifactStore (local.py)  a folder; atomic writes; served by http.artifact_router
    └── S3ArtifactStore (s3.py)        boto3: multipart uploads, Range GET, SigV4 presigned GET/PUT

Errors (errors.py):

    ArtifactError
    ├── InvalidKey · ArtifactNotFound · ArtifactTooLarge · RangeNotSatisfiable · PresignNotConfigured
    └── StoreUnavailable (retryable)
"""

from __future__ import annotations

from controller.artifacts.errors import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactTooLarge,
    InvalidKey,
    PresignNotConfigured,
    RangeNotSatisfiable,
    StoreUnavailable,
)
from controller.artifacts.factory import store_from_url
from controller.artifacts.local import LocalArtifactStore
from controller.artifacts.presign import SignatureRejected, UrlSigner
from controller.artifacts.s3 import S3ArtifactStore
from controller.artifacts.store import ArtifactStore, ByteStream, validate_key

__all__ = [
    "ArtifactError",
    "ArtifactNotFound",
    "ArtifactStore",
    "ArtifactTooLarge",
    "ByteStream",
    "InvalidKey",
    "LocalArtifactStore",
    "PresignNotConfigured",
    "RangeNotSatisfiable",
    "S3ArtifactStore",
    "SignatureRejected",
    "StoreUnavailable",
    "UrlSigner",
    "store_from_url",
    "validate_key",
]
