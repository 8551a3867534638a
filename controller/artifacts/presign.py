"""Presigned URLs for the controller's own artifact HTTP endpoint (the local store's counterpart of S3
presigning).

A URL is `<base_url>/<key>?expires=<unix-seconds>&signature=<hex>` where the signature is
HMAC-SHA256(secret, "<METHOD>\\n<key>\\n<expires>"). The method is inside the MAC, so a GET URL cannot be
turned into a PUT; the key and expiry are inside it, so editing either breaks the URL. Comparison is
constant-time. The secret is the controller's, never the device's; rotating it invalidates every
outstanding URL, which is the intended emergency brake.

A PUT URL may also be bound to an exact body length (`&length=<bytes>`, MAC over
"<METHOD>\\n<key>\\n<expires>\\n<length>"), as S3 binds a presigned PUT to a signed Content-Length: the
endpoint then refuses a body of any other size. Removing or editing `length` breaks the MAC.

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

    def _mac(self, method: str, key: str, expires: int, length: int | None = None) -> str:
        message = f"{method.upper()}\n{key}\n{expires}" + ("" if length is None else f"\n{length}")
        return hmac.new(self.secret, message.encode(), hashlib.sha256).hexdigest()

    def sign(self, method: str, key: str, *, expires_s: int, content_length: int | None = None) -> str:
        """A URL for `method` on `key`; with `content_length`, valid only for a body of exactly that size."""
        validate_key(key)
        if not 1 <= expires_s <= MAX_EXPIRES_S:
            raise ValueError(f"expires_s must be within 1..{MAX_EXPIRES_S}, got {expires_s}")
        check_content_length(content_length)
        expires = int(self.clock()) + expires_s
        params: dict[str, int | str] = {"expires": expires}
        if content_length is not None:
            params["length"] = content_length
        params["signature"] = self._mac(method, key, expires, content_length)
        return f"{self.base_url.rstrip('/')}/{quote(key, safe='/')}?{urlencode(params)}"

    def verify(
        self, method: str, key: str, expires: str | None, signature: str | None, length: str | None = None
    ) -> int | None:
        """Raise `SignatureRejected` unless (method, key, expires, length, signature) came from `sign`;
        returns the signed body length (None when the URL is not bound to one)."""
        if expires is None or signature is None:
            raise SignatureRejected("missing 'expires' or 'signature' query parameter")
        try:
            expires_at = int(expires)
        except ValueError:
            raise SignatureRejected(f"'expires' must be an integer, got {expires[:32]!r}") from None
        content_length: int | None = None
        if length is not None:
            if not (length.isascii() and length.isdigit()) or len(length) > 19:
                raise SignatureRejected(f"'length' must be a byte count, got {length[:32]!r}")
            content_length = int(length)
        expected = self._mac(method, key, expires_at, content_length)
        if not hmac.compare_digest(expected, signature.lower()):
            raise SignatureRejected("signature does not match this method, key and expiry")
        now = self.clock()
        if now > expires_at:
            raise SignatureRejected(f"URL expired at {expires_at}, now {int(now)}")
        return content_length


def check_content_length(content_length: int | None) -> None:
    """A body length to bind a presigned PUT to: None (unbound) or a non-negative int."""
    if content_length is not None and (
        isinstance(content_length, bool) or not isinstance(content_length, int) or content_length < 0
    ):
        raise ValueError(f"content_length must be a non-negative integer, got {content_length!r}")
