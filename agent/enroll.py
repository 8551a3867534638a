"""`edgefleet-agent enroll`: give this device its identity, once, with a one-time token.

    device                                                   controller
    ── generate EC P-256 key (identity/device.key, 0600) ──   (the private key never leaves the device)
    ── CSR (signed with that key) + token + hardware profile ──▶ POST /api/v1/enroll
    ◀── certificate (CN = device id), fleet CA, MQTT credentials, image root, director root ──
    ── check: the certificate binds OUR key, is issued by the CA it came with, names the device id
    ── write identity/, trust.json (pinned roots), then identity/enrollment.json last (the marker)

What lands in the state folder:

| path                        | mode | what                                                         |
|-----------------------------|------|--------------------------------------------------------------|
| identity/device.key         | 0600 | the device's private key (PKCS#8 PEM), generated here        |
| identity/device.crt         | 0644 | its certificate from the fleet CA                            |
| identity/ca.crt             | 0644 | the fleet CA: verifies the broker and, with TLS, the API     |
| identity/mqtt.password      | 0600 | the broker password (for brokers that use passwords)         |
| identity/enrollment.json    | 0644 | device id, broker address, API URL, certificate serial/expiry |
| trust.json                  | 0600 | pinned image-repository root and director root (manifests)   |

After the first certificate renewal (`agent.renewal`) `device.key` and `device.crt` are links into
`identity/pairs/<serial>/` through one `current` link, so the pair is swapped with a single rename; the
paths above stay the ones to open.

`enrollment.json` is written last, so its presence means the enrollment finished; running the command
again is then a no-op (what a provisioning playbook needs). A half-finished run keeps the key, so the
retry proves possession of the same key; the controller refuses a key it already enrolled, in which
case an operator revokes that device and the device starts over with `--new-key`.

Errors::

    EnrollError                  base; `retryable` says whether running again can help
    ├── EnrollmentRefused        the controller said no (bad/used token, revoked key): not retryable
    ├── ControllerUnreachable    network or 5xx/429: retryable
    └── BadEnrollmentAnswer      the answer is malformed or does not bind our key: not retryable

The token is read from a file or the environment, never from the command line (where `ps` shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import wire

if TYPE_CHECKING:  # imported where used: the daemon reads Identity and identity_problems without them
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

TOKEN_ENV = "EDGEFLEET_ENROLLMENT_TOKEN"
MAX_ANSWER_BYTES = 2 * 1024 * 1024
IDENTITY_DIR = "identity"
KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CA_FILE = "ca.crt"
PASSWORD_FILE = "mqtt.password"
ENROLLMENT_FILE = "enrollment.json"
TRUST_FILE = "trust.json"


class EnrollError(Exception):
    retryable = False


class EnrollmentRefused(EnrollError):
    pass


class ControllerUnreachable(EnrollError):
    retryable = True


class BadEnrollmentAnswer(EnrollError):
    pass


@dataclass(frozen=True)
class Identity:
    """Where an enrolled device's identity lives; the daemon reads the same paths."""

    state_dir: Path

    @property
    def folder(self) -> Path:
        return self.state_dir / IDENTITY_DIR

    @property
    def key_path(self) -> Path:
        return self.folder / KEY_FILE

    @property
    def cert_path(self) -> Path:
        return self.folder / CERT_FILE

    @property
    def ca_path(self) -> Path:
        return self.folder / CA_FILE

    @property
    def password_path(self) -> Path:
        return self.folder / PASSWORD_FILE

    @property
    def enrollment_path(self) -> Path:
        return self.folder / ENROLLMENT_FILE

    @property
    def trust_path(self) -> Path:
        return self.state_dir / TRUST_FILE

    def enrolled(self) -> dict[str, Any] | None:
        """The enrollment record, or None when this device has not finished enrolling."""
        try:
            value = json.loads(self.enrollment_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise EnrollError(f"{self.enrollment_path} is unreadable: {e}") from e
        if not isinstance(value, dict) or not wire.is_device_id(str(value.get("device_id", ""))):
            raise EnrollError(f"{self.enrollment_path} is not an enrollment record")
        return value


def identity_problems(state_dir: Path, also: Sequence[Path] = ()) -> list[str]:
    """Secrets of an enrolled device that others could read or swap (empty when none); the daemon
    refuses to start on any, because a readable device key lets another local user impersonate it.

    `also` adds secret files kept outside the state folder (a configured TLS key or password file).
    """
    identity = Identity(state_dir)
    problems = []
    paths = dict.fromkeys((identity.key_path, identity.password_path, identity.trust_path, *also))
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_mode & 0o077:
            problems.append(f"{path} has mode {st.st_mode & 0o777:04o}; it must be 0600 (chmod 600 {path})")
        if st.st_uid != os.geteuid():
            problems.append(f"{path} is owned by uid {st.st_uid}, not by the agent's uid {os.geteuid()}")
    return problems


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with `mode` set before any byte lands (keys are never briefly world-readable)."""
    from manifests.client import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_atomic(path, data)
    os.chmod(path, mode)


def load_or_create_key(identity: Identity, *, new_key: bool = False) -> ec.EllipticCurvePrivateKey:
    """The device key: reused after an interrupted run, created (0600) the first time."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if identity.key_path.exists() and not new_key:
        key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnrollError(f"{identity.key_path} is not an EC private key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(identity.key_path, pem, 0o600)
    return key


def build_csr(key: ec.EllipticCurvePrivateKey, requested_id: str | None) -> str:
    # The controller decides the subject; the CN here is only a hint and the signature is the point.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, requested_id or "edgefleet-device")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def post_json(
    url: str,
    path: str,
    body: dict[str, Any],
    *,
    ca_file: Path | None,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    what: str = "enrollment",
) -> dict[str, Any]:
    """POST `body` to `url` + `path`; maps HTTP outcomes onto the error tree (enrollment and renewal)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            raw = response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as e:
        detail = e.read(4096).decode("utf-8", "replace")
        if e.code == 429 or e.code >= 500:
            raise ControllerUnreachable(f"controller answered {e.code}: {detail}") from e
        raise EnrollmentRefused(f"controller refused {what} ({e.code}): {detail}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ControllerUnreachable(f"cannot reach the controller at {url}: {e}") from e
    if len(raw) > MAX_ANSWER_BYTES:
        raise BadEnrollmentAnswer(f"{what} answer exceeds {MAX_ANSWER_BYTES} bytes")
    try:
        answer = json.loads(raw)
    except ValueError as e:
        raise BadEnrollmentAnswer(f"{what} answer is not JSON: {e}") from e
    if not isinstance(answer, dict):
        raise BadEnrollmentAnswer(f"{what} answer is not a JSON object")
    return answer


def post_enrollment(url: str, body: dict[str, Any], *, ca_file: Path | None, timeout_s: float) -> dict[str, Any]:
    """POST the enrollment request; maps HTTP outcomes onto the error tree."""
    return post_json(url, "/api/v1/enroll", body, ca_file=ca_file, timeout_s=timeout_s)


def _field(obj: dict[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BadEnrollmentAnswer(f"enrollment answer: {name} should be {kind.__name__}, got {value!r:.80}")
    return value


def check_certificate(
    cert_pem: str, *, key: ec.EllipticCurvePrivateKey, device_id: str, ca: x509.Certificate
) -> x509.Certificate:
    """The certificate, after checking it binds `key`, names `device_id` and is signed by `ca`."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise BadEnrollmentAnswer(f"certificate in the answer is not PEM: {e}") from e
    ours = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ours != theirs:
        raise BadEnrollmentAnswer("the issued certificate does not carry this device's public key")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [device_id]:
        raise BadEnrollmentAnswer(f"certificate subject {cert.subject.rfc4514_string()} does not name {device_id}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise BadEnrollmentAnswer(f"certificate is not issued by the fleet CA: {e}") from e
    return cert


def check_answer(answer: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> tuple[str, x509.Certificate]:
    """The device id, after checking the certificate binds our key, names the id and chains to the CA."""
    from cryptography import x509

    device_id = _field(answer, "device_id", str)
    if not wire.is_device_id(device_id):
        raise BadEnrollmentAnswer(f"device id {device_id!r:.80} is not a valid device id")
    try:
        ca = x509.load_pem_x509_certificate(_field(answer, "ca_certificate", str).encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise BadEnrollmentAnswer(f"CA certificate in the answer is not PEM: {e}") from e
    cert = check_certificate(_field(answer, "certificate", str), key=key, device_id=device_id, ca=ca)
    mqtt = _field(answer, "mqtt", dict)
    for name, kind in (("host", str), ("port", int), ("tls", bool), ("username", str), ("password", str)):
        _field(mqtt, name, kind)
    _field(answer, "image_repository_root", dict)
    _field(answer, "director_root", dict)
    return device_id, cert


def store_enrollment(identity: Identity, answer: dict[str, Any], device_id: str, cert: x509.Certificate) -> None:
    from cryptography.hazmat.primitives import serialization

    from manifests.client import TrustClient
    from manifests.errors import TrustError

    _write(identity.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(identity.ca_path, answer["ca_certificate"].encode("ascii"), 0o644)
    _write(identity.password_path, answer["mqtt"]["password"].encode("utf-8"), 0o600)
    # A trust.json without enrollment.json is the leftover of an interrupted run: replace it.
    identity.trust_path.unlink(missing_ok=True)
    try:
        TrustClient.enroll(
            identity.trust_path,
            device_id,
            director_root=json.dumps(answer["director_root"]).encode("utf-8"),
            image_root=json.dumps(answer["image_repository_root"]).encode("utf-8"),
        )
    except TrustError as e:
        raise BadEnrollmentAnswer(f"pinned roots refused: {e}") from e
    os.chmod(identity.trust_path, 0o600)
    mqtt = answer["mqtt"]
    record = {
        "schema": 1,
        "device_id": device_id,
        "hardware_class": answer.get("hardware_class"),
        "tags": answer.get("tags", []),
        "api_url": answer.get("api_url"),
        "certificate_serial": answer.get("certificate_serial"),
        "certificate_not_after": answer.get("certificate_not_after"),
        "mqtt": {
            "host": mqtt["host"],
            "port": mqtt["port"],
            "tls": mqtt["tls"],
            "username": mqtt["username"],
            "client_id": mqtt.get("client_id", device_id),
            "password_file": str(identity.password_path),
        },
        "key_file": str(identity.key_path),
        "cert_file": str(identity.cert_path),
        "ca_file": str(identity.ca_path),
        "trust_file": str(identity.trust_path),
    }
    _write(identity.enrollment_path, json.dumps(record, indent=2, sort_keys=True).encode("utf-8"), 0o644)


def read_token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise EnrollError(f"cannot read the enrollment token file {token_file}: {e}") from e
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise EnrollError(f"no enrollment token: give --token-file or set {TOKEN_ENV}")
    return token


def enroll(
    state_dir: Path,
    controller_url: str,
    token: str,
    *,
    requested_id: str | None = None,
    hardware_class: str | None = None,
    probe_root: Path = Path("/"),
    controller_ca: Path | None = None,
    timeout_s: float = 30.0,
    new_key: bool = False,
) -> tuple[str, bool]:
    """Enroll unless already enrolled; returns (device id, whether this call enrolled it)."""
    identity = Identity(state_dir)
    existing = identity.enrolled()
    if existing is not None:
        return str(existing["device_id"]), False
    from agent.hardware.probe import probe

    profile = probe(probe_root).to_dict()
    key = load_or_create_key(identity, new_key=new_key)
    body: dict[str, Any] = {
        "token": token,
        "csr": build_csr(key, requested_id),
        "hardware_class": hardware_class or profile["hardware_class"],
        "hardware_profile": profile,
    }
    if requested_id:
        body["device_id"] = requested_id
    answer = post_enrollment(controller_url, body, ca_file=controller_ca, timeout_s=timeout_s)
    device_id, cert = check_answer(answer, key)
    store_enrollment(identity, answer, device_id, cert)
    return device_id, True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller", required=True, help="controller base URL, e.g. https://fleet.example:8080")
    parser.add_argument("--state-dir", type=Path, required=True, help="the agent's state folder")
    parser.add_argument("--token-file", type=Path, help=f"file holding the one-time token (else ${TOKEN_ENV})")
    parser.add_argument("--device-id", help="requested device id (the controller generates one when absent)")
    parser.add_argument("--hardware-class", help="override the probed hardware class")
    parser.add_argument("--probe-root", type=Path, default=Path("/"), help="filesystem root for the probe")
    parser.add_argument("--controller-ca", type=Path, help="CA bundle to verify an HTTPS controller")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--new-key", action="store_true", help="discard a key left by an interrupted run")


def run(args: argparse.Namespace) -> int:
    try:
        device_id, fresh = enroll(
            args.state_dir,
            args.controller,
            read_token(args.token_file),
            requested_id=args.device_id,
            hardware_class=args.hardware_class,
            probe_root=args.probe_root,
            controller_ca=args.controller_ca,
            timeout_s=args.timeout_s,
            new_key=args.new_key,
        )
    except EnrollError as e:
        print(f"enrollment failed: {e}", file=sys.stderr)
        return 75 if e.retryable else 1  # 75 = EX_TEMPFAIL: a supervisor may retry
    print(json.dumps({"device_id": device_id, "enrolled": fresh, "state_dir": str(args.state_dir)}))
    return 0
