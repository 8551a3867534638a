"""The staging error tree (re-exported by `agent.staging`, drawn there)."""

from __future__ import annotations


class StagingError(Exception):
    """Root: a target could not be staged. `retryable` says whether trying again can help."""

    retryable = False
    reason = "staging_failed"


class TransferError(StagingError):
    """The connection failed or broke; the partial file is kept and the next try resumes."""

    retryable = True
    reason = "transfer_failed"

    def __init__(self, message: str, *, range_not_satisfiable: bool = False, restart: bool = False) -> None:
        super().__init__(message)
        self.range_not_satisfiable = range_not_satisfiable
        self.restart = restart
        self.bytes_received = 0


class UrlExpiredError(TransferError):
    """403: a presigned URL expired; retry with a fresh URL from the locator."""

    reason = "url_expired"


class SourceError(StagingError):
    """The source refuses the request for good (404, unsupported scheme, missing file)."""

    reason = "source_error"


class IntegrityError(StagingError):
    """The bytes do not match the signed target: too long or wrong hash. The partial file is deleted."""

    reason = "integrity"


class PackageError(StagingError):
    """A verified package (e.g. an OpenVINO IR tar) is malformed; nothing is adopted."""

    reason = "bad_package"


class SlowRetrievalError(StagingError):
    """Below the minimum speed or past the overall deadline (a slow-retrieval attack or a bad link)."""

    retryable = True
    reason = "slow_retrieval"


class DiskSpaceError(StagingError):
    """Not enough free space on the model disk (with the reserve kept free); nothing was written."""

    reason = "disk_full"
