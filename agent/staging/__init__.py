"""Resumable, bounded, verified staging of signed targets into the slot store.

Errors (one tree; `retryable` on each class says whether trying again can help):

    StagingError
    ├── TransferError        connection failed or broke; the partial file is kept (retry: yes)
    │   └── UrlExpiredError  403 on a presigned URL; retried with a fresh URL (retry: yes)
    ├── SourceError          404, unsupported scheme, missing file (retry: no)
    ├── IntegrityError       more bytes than signed, or the wrong hash; partial deleted (retry: no)
    ├── PackageError         a verified package (OpenVINO IR tar) is malformed (retry: no)
    ├── SlowRetrievalError   below the minimum speed or past the deadline (retry: later)
    └── DiskSpaceError       not enough free space plus reserve (retry: no, until space is freed)
"""

from __future__ import annotations

from agent.staging.errors import (
    DiskSpaceError,
    IntegrityError,
    PackageError,
    SlowRetrievalError,
    SourceError,
    StagingError,
    TransferError,
    UrlExpiredError,
)
from agent.staging.sources import BaseUrlLocator, Fetcher, FetchStream, TargetLocator, UrlFetcher, redact_url
from agent.staging.stager import Stager, StageResult, StagingConfig

__all__ = [
    "BaseUrlLocator",
    "DiskSpaceError",
    "FetchStream",
    "Fetcher",
    "IntegrityError",
    "PackageError",
    "SlowRetrievalError",
    "SourceError",
    "StageResult",
    "Stager",
    "StagingConfig",
    "StagingError",
    "TargetLocator",
    "TransferError",
    "UrlExpiredError",
    "UrlFetcher",
    "redact_url",
]
