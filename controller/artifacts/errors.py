"""The artifact store's error tree.

    ArtifactError                  root; never raised itself
    ├── InvalidKey                 the key is not a safe '/'-separated relative path (retry cannot help)
    ├── ArtifactNotFound           no object under that key (retry cannot help)
    ├── ArtifactTooLarge           the object is over the caller's byte limit; nothing was kept
    ├── RangeNotSatisfiable        a byte range outside the object
    ├── PresignNotConfigured       this store cannot issue presigned URLs (no signer / base URL)
    └── StoreUnavailable           the backend did not answer or failed (a retry may help)

Foreign exceptions (OSError, botocore errors) are wrapped at the store boundary, so callers handle one
tree whatever the backend.
"""

from __future__ import annotations


class ArtifactError(Exception):
    """Root of the artifact store's errors; `retryable` says whether trying again can help."""

    retryable = False


class InvalidKey(ArtifactError, ValueError):
    pass


class ArtifactNotFound(ArtifactError, KeyError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no artifact under key {self.key!r}"


class ArtifactTooLarge(ArtifactError):
    def __init__(self, key: str, max_bytes: int) -> None:
        super().__init__(f"artifact {key!r} is over the limit of {max_bytes} bytes")
        self.key = key
        self.max_bytes = max_bytes


class RangeNotSatisfiable(ArtifactError):
    def __init__(self, key: str, start: int, size: int) -> None:
        super().__init__(f"range start {start} is outside artifact {key!r} of {size} bytes")
        self.key = key
        self.start = start
        self.size = size


class PresignNotConfigured(ArtifactError):
    pass


class StoreUnavailable(ArtifactError):
    retryable = True
