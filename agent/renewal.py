"""`edgefleet-agent renew`: trade the device certificate for a new one, with a new key, before it expires.

    device                                                        controller
    ── new EC P-256 key (memory only until the answer is checked)
    ── CSR (CN = device id, signed by the new key)
       + proof (the CURRENT key signs context ‖ device id ‖ CSR) ─ device token ─▶ POST /api/v1/device/certificate/renew
    ◀── new certificate (+ fleet CA) ──
    ── check: binds the NEW key, names this device, issued by the PINNED fleet CA (identity/ca.crt)
    ── swap key + certificate together (below), then delete the old key

On disk the pair lives in one folder and two stable names point into it::

    identity/device.key  -> current/device.key        identity/pairs/<serial>/device.key (0600)
    identity/device.crt  -> current/device.crt        identity/pairs/<serial>/device.crt (0644)
    identity/current     -> pairs/<serial>

The swap writes `pairs/<new serial>/` completely (temp names, fsync, rename, fsync the folder), then
replaces the `current` link with one `rename(2)`: a reader opening `device.key` and `device.crt` finds
the old pair before that instant and the new pair after it, never one of each, so a power cut at any
step leaves a matching pair. A device enrolled with plain files is converted first, by the same rule:
its pair is copied into `pairs/<serial>/` and each plain file is replaced by its link in turn, each
link resolving to the very bytes it replaces.

The controller keeps the old certificate valid until it expires or the new one is seen in use, so a
device that dies after the controller answered but before the swap still holds a valid pair; running
`renew` again supersedes the certificate it never stored.

Errors are `agent.enroll`'s tree: EnrollmentRefused (revoked, barred key, bad proof: not retryable),
ControllerUnreachable (retryable), BadEnrollmentAnswer (the answer does not bind our key), EnrollError.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from agent.enroll import (
    CERT_FILE,
    KEY_FILE,
    BadEnrollmentAnswer,
    EnrollError,
    Identity,
    _write,
    check_certificate,
    post_json,
)

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

RENEW_PATH = "/api/v1/device/certificate/renew"
#: Must match the controller's `controller.enrollment.renewal.PROOF_CONTEXT` (persisted on the wire).
PROOF_CONTEXT = b"edgefleet-certificate-renewal-v1\x00"
DEFAULT_FRACTION = 2 / 3
DEFAULT_MIN_DAYS_LEFT = 30.0
PAIRS_DIR = "pairs"
CURRENT_LINK = "current"

#: Called after each step of `renew` with the step's name; tests use it to stop the run at any point.
StepHook = Callable[[str], None]


@dataclass(frozen=True)
class Renewed:
    device_id: str
    serial: str
    not_after: datetime
    previous_serial: str


def renewal_due(
    cert: x509.Certificate,
    now: datetime,
    fraction: float = DEFAULT_FRACTION,
    min_days_left: float = DEFAULT_MIN_DAYS_LEFT,
) -> bool:
    """True once `fraction` of the certificate's lifetime has passed, or fewer than `min_days_left` remain.

    Pure: the clock is an argument. The lifetime fraction spreads a fleet enrolled over time; the days
    floor keeps short-lived certificates from waiting until their last hours.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    renew_at = start + (end - start) * fraction
    return now >= renew_at or end - now <= timedelta(days=min_days_left)


def proof_message(device_id: str, csr_pem: str) -> bytes:
    return PROOF_CONTEXT + device_id.encode("ascii") + b"\x00" + csr_pem.encode("ascii")


def load_pair(identity: Identity) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The device key and certificate, after checking they belong together."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    except (OSError, ValueError) as e:
        raise EnrollError(f"the device key or certificate in {identity.folder} is unreadable: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EnrollError(f"{identity.key_path} is not an EC private key")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise EnrollError(f"{identity.cert_path} does not match {identity.key_path}")
    return key, cert


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_with_link(link: Path, target: str) -> None:
    """Point `link` at `target` with one rename (a symlink made under a temporary name first)."""
    tmp = link.with_name(f".{link.name}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _store_pair(identity: Identity, serial: str, key_pem: bytes, cert_pem: bytes) -> str:
    """Write `pairs/<serial>/` completely; returns its path relative to the identity folder."""
    pairs = identity.folder / PAIRS_DIR
    pairs.mkdir(mode=0o700, exist_ok=True)
    final = pairs / serial
    staging = pairs / f".{serial}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    _write(staging / KEY_FILE, key_pem, 0o600)
    _write(staging / CERT_FILE, cert_pem, 0o644)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync_dir(pairs)
    return f"{PAIRS_DIR}/{serial}"


def _prune(identity: Identity) -> None:
    """Remove pairs the `current` link does not name (left by a run stopped after its swap)."""
    pairs = identity.folder / PAIRS_DIR
    link = identity.folder / CURRENT_LINK
    if not pairs.is_dir() or not link.is_symlink():
        return
    keep = Path(os.readlink(link)).name
    for old in pairs.iterdir():
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(pairs)


def _linked(identity: Identity) -> bool:
    return (identity.folder / CURRENT_LINK).is_symlink() and identity.key_path.is_symlink() and (
        identity.cert_path.is_symlink()
    )


def adopt_plain_files(identity: Identity, serial: str, step: StepHook | None = None) -> None:
    """Move an enrolled pair of plain files into the link layout; every step leaves a matching pair."""
    hook: StepHook = step or (lambda _name: None)
    if _linked(identity):
        return
    if not identity.key_path.is_symlink() and not identity.cert_path.is_symlink():
        target = _store_pair(identity, serial, identity.key_path.read_bytes(), identity.cert_path.read_bytes())
        hook("adopt_pair_written")
        _replace_with_link(identity.folder / CURRENT_LINK, target)
        hook("adopt_current_linked")
    # `current` now holds the same pair as the plain files, so each link below changes no bytes.
    _replace_with_link(identity.key_path, f"{CURRENT_LINK}/{KEY_FILE}")
    hook("adopt_key_linked")
    _replace_with_link(identity.cert_path, f"{CURRENT_LINK}/{CERT_FILE}")


def _swap(identity: Identity, serial: str, key_pem: bytes, cert_pem: bytes, step: StepHook) -> None:
    target = _store_pair(identity, serial, key_pem, cert_pem)
    step("pair_written")
    _replace_with_link(identity.folder / CURRENT_LINK, target)
    step("swapped")
    # The old key is destroyed: the old certificate, still valid on the controller for a while, is
    # then useless to anyone who later reads this disk.
    _prune(identity)


def _update_record(identity: Identity, serial: str, not_after: datetime) -> None:
    """enrollment.json mirrors the serial and expiry for operators; the certificate file is the truth."""
    record = identity.enrolled() or {}
    record["certificate_serial"] = serial
    record["certificate_not_after"] = not_after.isoformat()
    _write(identity.enrollment_path, json.dumps(record, indent=2, sort_keys=True).encode("utf-8"), 0o644)


def renew(
    identity: Identity,
    controller_url: str | None = None,
    *,
    controller_ca: Path | None = None,
    timeout_s: float = 30.0,
    step: StepHook | None = None,
) -> Renewed:
    """Renew this device's certificate with a new key; the pair on disk is swapped only when all checks pass."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    hook: StepHook = step or (lambda _name: None)
    record = identity.enrolled()
    if record is None:
        raise EnrollError(f"{identity.state_dir} holds no finished enrollment: run `edgefleet-agent enroll` first")
    device_id = str(record["device_id"])
    url = controller_url or record.get("api_url")
    if not isinstance(url, str) or not url:
        raise EnrollError("no controller URL: give --controller (enrollment.json has none)")
    try:
        pinned_ca = x509.load_pem_x509_certificate(identity.ca_path.read_bytes())
        password = identity.password_path.read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as e:
        raise EnrollError(f"the pinned fleet CA or device token in {identity.folder} is unreadable: {e}") from e
    old_key, old_cert = load_pair(identity)
    previous_serial = format(old_cert.serial_number, "x")
    adopt_plain_files(identity, previous_serial, hook)
    _prune(identity)
    hook("adopted")

    new_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr_pem = (
        x509.CertificateSigningRequestBuilder().subject_name(name).sign(new_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM).decode("ascii")
    )
    proof = old_key.sign(proof_message(device_id, csr_pem), ec.ECDSA(hashes.SHA256()))
    body = {
        "csr": csr_pem,
        "certificate": old_cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "proof": base64.b64encode(proof).decode("ascii"),
    }
    basic = base64.b64encode(f"{device_id}:{password}".encode()).decode("ascii")
    hook("requesting")
    answer = post_json(
        url, RENEW_PATH, body, ca_file=controller_ca, timeout_s=timeout_s,
        headers={"Authorization": f"Basic {basic}"}, what="certificate renewal",
    )
    hook("answered")
    cert_pem = answer.get("certificate")
    if not isinstance(cert_pem, str):
        raise BadEnrollmentAnswer(f"renewal answer: certificate should be str, got {cert_pem!r:.80}")
    cert = check_certificate(cert_pem, key=new_key, device_id=device_id, ca=pinned_ca)
    serial = format(cert.serial_number, "x")
    key_pem = new_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _swap(identity, serial, key_pem, cert.public_bytes(serialization.Encoding.PEM), hook)
    _update_record(identity, serial, cert.not_valid_after_utc)
    hook("done")
    return Renewed(device_id, serial, cert.not_valid_after_utc, previous_serial)


def renew_if_due(
    identity: Identity,
    now: datetime | None = None,
    *,
    controller_url: str | None = None,
    controller_ca: Path | None = None,
    fraction: float = DEFAULT_FRACTION,
    min_days_left: float = DEFAULT_MIN_DAYS_LEFT,
    timeout_s: float = 30.0,
) -> Renewed | None:
    """The daemon's hook: renew when `renewal_due` says so, else do nothing and return None."""
    _, cert = load_pair(identity)
    if not renewal_due(cert, now or datetime.now(timezone.utc), fraction, min_days_left):
        return None
    return renew(identity, controller_url, controller_ca=controller_ca, timeout_s=timeout_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, required=True, help="the agent's state folder")
    parser.add_argument("--controller", help="controller base URL (default: the one recorded at enrollment)")
    parser.add_argument("--controller-ca", type=Path, help="CA bundle to verify an HTTPS controller")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--if-due", action="store_true", help="renew only when the certificate is due")
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION, help="lifetime fraction (--if-due)")
    parser.add_argument("--min-days-left", type=float, default=DEFAULT_MIN_DAYS_LEFT, help="days floor (--if-due)")


def run(args: argparse.Namespace) -> int:
    identity = Identity(args.state_dir)
    try:
        if args.if_due:
            result = renew_if_due(
                identity, controller_url=args.controller, controller_ca=args.controller_ca,
                fraction=args.fraction, min_days_left=args.min_days_left, timeout_s=args.timeout_s,
            )
        else:
            result = renew(identity, args.controller, controller_ca=args.controller_ca, timeout_s=args.timeout_s)
    except (EnrollError, ValueError) as e:
        print(f"certificate renewal failed: {e}", file=sys.stderr)
        return 75 if isinstance(e, EnrollError) and e.retryable else 1
    if result is None:
        print(json.dumps({"renewed": False, "state_dir": str(args.state_dir)}))
        return 0
    print(json.dumps({
        "renewed": True, "device_id": result.device_id, "serial": result.serial,
        "not_after": result.not_after.isoformat(), "previous_serial": result.previous_serial,
    }))
    return 0
