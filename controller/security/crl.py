"""Publishing the fleet CA's revocation list to the broker.

Revoking a device (`POST /api/v1/devices/<id>/revoke`) drops its password at once, but a device that
authenticates with its certificate is refused only once the broker holds a CRL listing that
certificate. The broker host therefore runs `python -m controller.security crl` from a timer: it fetches
the signed CRL from the controller (`GET /api/v1/ca/crl`, a viewer token), checks it is signed by the
fleet CA the broker already trusts, writes it atomically only when it changed, and then runs the
reload command: `systemctl reload mosquitto` (SIGHUP), which Mosquitto 2 answers by re-reading the
CRL for new handshakes while every open connection stays up. A restart would drop the whole fleet.

The CRL's own `next_update` bounds how stale a broker may get: Mosquitto refuses every client once the
CRL expires, so the timer must run well inside that lifetime (24 h by default).
"""

from __future__ import annotations

import subprocess
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

from controller.security.errors import SecurityConfigError
from controller.security.files import write_private

MAX_CRL_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class CrlFacts:
    revoked_serials: frozenset[str]
    next_update: datetime | None


def check_crl(crl_pem: bytes, ca_pem: bytes, *, now: datetime | None = None) -> CrlFacts:
    """The CRL's revoked serials, after checking it is a current CRL signed by the CA."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as e:
        raise SecurityConfigError(f"not a PEM CRL / CA certificate: {e}") from e
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise SecurityConfigError(f"CRL issued by {crl.issuer.rfc4514_string()} is not signed by the fleet CA")
    now = now or datetime.now(timezone.utc)
    next_update = crl.next_update_utc
    if next_update is not None and next_update <= now:
        raise SecurityConfigError(f"CRL expired at {next_update.isoformat()}")
    return CrlFacts(frozenset(format(r.serial_number, "x") for r in crl), next_update)


def fetch_crl(api_url: str, token: str, *, timeout_s: float = 30.0) -> bytes:
    request = urllib.request.Request(
        api_url.rstrip("/") + "/api/v1/ca/crl", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data: bytes = response.read(MAX_CRL_BYTES + 1)
    except OSError as e:
        raise SecurityConfigError(f"cannot fetch the CRL from {api_url}: {e}") from e
    if len(data) > MAX_CRL_BYTES:
        raise SecurityConfigError(f"CRL from {api_url} exceeds {MAX_CRL_BYTES} bytes")
    return data


def install_crl(crl_pem: bytes, ca_pem: bytes, target: Path, *, reload_command: list[str] | None = None) -> bool:
    """Write `crl_pem` to `target` when its revocations differ; run the reload command after a change.

    Returns whether the file changed. A CRL that fails `check_crl` never replaces the current one.
    """
    fresh = check_crl(crl_pem, ca_pem)
    try:
        current: CrlFacts | None = check_crl(target.read_bytes(), ca_pem)
    except (OSError, SecurityConfigError):
        current = None
    # Same revocations: rewrite only to renew a CRL that expires within 6 h, and reload then too, for
    # Mosquitto to hold the new dates before the old ones lapse (it refuses everyone once they do).
    if current is not None and current.revoked_serials == fresh.revoked_serials:
        if current.next_update is None or fresh.next_update is None:
            return False
        remaining_s = (current.next_update - datetime.now(timezone.utc)).total_seconds()
        if remaining_s > 6 * 3600:
            return False
    write_private(target, crl_pem, 0o644)
    if reload_command:
        subprocess.run(reload_command, check=True, timeout=60)
    return True
