"""The fleet certificate authority: issues device certificates and the revocation list.

The CA key (ECDSA P-256, understood by every TLS stack a broker or device runs) lives in the CA folder
with mode 0600 and never leaves the controller. Device certificates are issued from a CSR (whose
signature proves the device holds the private key) or from a bare public key; either way the subject
is decided here — CN = device id — and the requested subject of a CSR is ignored, because broker ACLs
key on the certificate identity and a device must not choose its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.errors import InvalidInput
from controller.security.files import write_private

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
MAX_KEY_PEM_BYTES = 16 * 1024
DEVICE_URI_PREFIX = "urn:edgefleet:device:"

DevicePublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    serial_hex: str
    not_after: datetime
    public_key_sha256: str


def public_key_sha256(key: DevicePublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _check_key(key: object) -> DevicePublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < 256:
            raise InvalidInput(f"EC device keys need at least 256 bits; got {key.curve.name}")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidInput(f"RSA device keys need at least 2048 bits; got {key.key_size}")
        return key
    raise InvalidInput(f"device keys must be EC (P-256+), Ed25519 or RSA (2048+); got {type(key).__name__}")


def public_key_from_csr(csr_pem: str) -> DevicePublicKey:
    """The CSR's public key, after checking the CSR is signed by the matching private key."""
    if len(csr_pem) > MAX_KEY_PEM_BYTES:
        raise InvalidInput(f"CSR is {len(csr_pem)} bytes; at most {MAX_KEY_PEM_BYTES} accepted")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise InvalidInput(f"csr is not a PEM certificate signing request: {e}") from e
    if not csr.is_signature_valid:
        raise InvalidInput("csr signature does not verify: the requester does not hold the private key")
    return _check_key(csr.public_key())


def public_key_from_pem(public_key_pem: str) -> DevicePublicKey:
    if len(public_key_pem) > MAX_KEY_PEM_BYTES:
        raise InvalidInput(f"public key is {len(public_key_pem)} bytes; at most {MAX_KEY_PEM_BYTES} accepted")
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise InvalidInput(f"public_key is not a PEM SubjectPublicKeyInfo: {e}") from e
    return _check_key(key)


class FleetCA:
    """Signs device certificates and CRLs with the CA key kept in `ca_dir`."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self._key = key
        self.certificate = certificate

    @classmethod
    def load_or_create(cls, ca_dir: Path, *, common_name: str = "edgefleet fleet CA") -> FleetCA:
        """Load the CA from `ca_dir`, creating a fresh one (10 years) the first time."""
        key_path, cert_path = ca_dir / CA_KEY_FILE, ca_dir / CA_CERT_FILE
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC private key")
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        ca_dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(key_path, key_pem, 0o600)
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(key, cert)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def issue(self, device_id: str, public_key: DevicePublicKey, *, validity_days: int) -> IssuedCertificate:
        """A client certificate for `device_id` (CN and a URI SAN) binding `public_key`."""
        now = datetime.now(timezone.utc)
        not_after = now + timedelta(days=validity_days)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(
            pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            serial_hex=format(serial, "x"),
            not_after=not_after.replace(microsecond=0),
            public_key_sha256=public_key_sha256(public_key),
        )

    def crl_pem(self, revoked: list[tuple[str, datetime]], *, next_update_s: float = 24 * 3600) -> str:
        """A signed CRL listing `(serial_hex, revoked_at)` pairs; brokers reload it to refuse devices."""
        now = datetime.now(timezone.utc)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(now + timedelta(seconds=next_update_s))
        )
        for serial_hex, revoked_at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial_hex, 16))
                .revocation_date(revoked_at)
                .build()
            )
        return (
            builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode("ascii")
        )
