"""The one error tree of the trust chain, and the reason codes a refusal carries.

```
ManifestError                      anything raised by manifests/
├── TrustError(reason, retryable)  a document or repository was refused; nothing trusted changed
│   └── RepositoryUnavailable      the image repository could not be reached; retrying can help
├── KeyringError                   signing keys on disk are missing, unreadable or inconsistent
└── RepositoryWriteError           the image-repository writer refused an operation
```

A `TrustError` always names a `Reason`: the agent reports it upward and the controller counts it, so
the codes are part of the wire contract and are never renamed. Only `RepositoryUnavailable` says a retry
can help; every other refusal is about the data itself and fetching the same bytes again changes nothing.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a document was refused. Values are persisted and sent on the wire."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    SCHEMA_UNSUPPORTED = "schema_unsupported"
    DIRECTOR_ROOT_INVALID = "director_root_invalid"
    UNKNOWN_SIGNER = "unknown_signer"
    BELOW_THRESHOLD = "below_threshold"
    BAD_SIGNATURE = "bad_signature"
    WRONG_DEVICE = "wrong_device"
    REPLAYED = "replayed"
    EXPIRED = "expired"
    IMAGE_UNSIGNED = "image_unsigned"
    IMAGE_EXPIRED = "image_expired"
    IMAGE_ROLLBACK = "image_rollback"
    IMAGE_HASH_MISMATCH = "image_hash_mismatch"
    IMAGE_OVERSIZED = "image_oversized"
    IMAGE_INVALID = "image_invalid"
    IMAGE_UNREACHABLE = "image_unreachable"
    TARGET_NAME_INVALID = "target_name_invalid"
    TARGET_UNKNOWN = "target_unknown"
    TARGET_MISMATCH = "target_mismatch"
    TARGET_CUSTOM_MISMATCH = "target_custom_mismatch"
    RELEASE_COUNTER_DOWNGRADE = "release_counter_downgrade"
    STATE_INVALID = "state_invalid"


class ManifestError(Exception):
    """Root of every error raised by the manifests package."""


class TrustError(ManifestError):
    """A document or repository state was refused; the persisted trusted state is unchanged."""

    retryable = False

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class RepositoryUnavailable(TrustError):
    """The image repository could not be reached or answered with a transport error."""

    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(Reason.IMAGE_UNREACHABLE, message)


class KeyringError(ManifestError):
    """Signing keys on disk are missing, unreadable or do not match the root metadata."""


class RepositoryWriteError(ManifestError):
    """The image-repository writer refused an operation (bad target name, missing key, bad store)."""
