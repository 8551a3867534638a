"""Presigned URLs for the controller's own artifact HTTP endpoint (the local store's counterpart of S3
presigning).

A URL is `<base_url>/<key>?expires=<unix-seconds>&signature=<hex>` where the signature is
HMAC-SHA256(secret, "<METHOD>\\n<key>\\n<expires>"). The method is inside the MAC, so a GET URL cannot be
turned into a PUT; the key and expiry are inside it, so editing either breaks the URL. Comparison is
constant-time. The secret is the controller's, never the device's; rotating it invalidates every
outstanding URL, which is the intended emergency brake.

This module signs and checks; it does not serve. `controller/artifacts/http.py` serves.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from controller.artifacts.store import validate_key

MIN_SECRET_BYTES = 32
#: Longest lifetime of a presigned URL, as for S3 SigV4 (7 days).
MAX_EXPIRES_S = 7 * 24 * 3600


class SignatureRejected(Exception):
    """A presigned URL that is malformed, expired or does not match (retry cannot help)."""


@dataclass(frozen=True)
class UrlSigner:
    """Signs and verifies presigned URLs for one controller endpoint."""

    secret: bytes
    base_url: str
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"presign secret must be at least {MIN_SECRET_BYTES} bytes, got {len(self.secret)}"
            )
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"presign base URL must be http(s), got {self.base_url!r}")

    def _mac(self, method: str, key: str, expires: int) -> str:
        message = f"{method.upper()}\n{key}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def sign(self, method: str, key: str, *, expires_s: int) -> str:
        validate_key(key)
        if not 1 <= expires_s <= MAX_EXPIRES_S:
            raise ValueError(f"expires_s must be within 1..{MAX_EXPIRES_S}, got {expires_s}")
        expires = int(self.clock()) + expires_s
        query = urlencode({"expires": expires, "signature": self._mac(method, key, expires)})
        return f"{self.base_url.rstrip('/')}/{quote(key, safe='/')}?{query}"

    def verify(self, method: str, key: str, expires: str | None, signature: str | None) -> None:
        """Raise `SignatureRejected` unless (method, key, expires, signature) came from `sign`."""
        if expires is None or signature is None:
            raise SignatureRejected("missing 'expires' or 'signature' query parameter")
        try:
            expires_at = int(expires)
        except ValueError:
            raise SignatureRejected(f"'expires' must be an integer, got {expires[:32]!r}") from None
        expected = self._mac(method, key, expires_at)
        if not hmac.compare_digest(expected, signature.lower()):
            raise SignatureRejected("signature does not match this method, key and expiry")
        now = self.clock()
        if now > expires_at:
            raise SignatureRejected(f"URL expired at {expires_at}, now {int(now)}")
