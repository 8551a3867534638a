"""Mutual TLS for the broker, from the fleet CA: its server certificate, the controller's client
certificate, and the Mosquitto listener that enforces both.

    fleet CA (controller/enrollment/ca.py, ca_dir/ca.key)
      ├── device certificates       CN = device id             (issued at enrollment)
      ├── broker server certificate  SAN = broker host names    (issue_broker_certificate)
      └── controller client cert     CN = edgefleet_controller  (issue_controller_certificate)

The device listener requires a client certificate from the fleet CA, refuses what the CRL lists, and
takes the username from the certificate (`use_identity_as_username`), so the ACL's `%u` patterns bind
to the identity the CA signed and never to anything the device sends. `use_username_as_clientid`
additionally stops a device from taking over another's session by claiming its client id.

The controller identity `edgefleet_controller` contains an underscore, which enrollment's device-id
pattern (`[a-z0-9-]`) never allows: no device can be issued a certificate that names the controller.

This module writes files; it does not start or signal brokers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.enrollment.ca import CA_CERT_FILE, CA_KEY_FILE
from controller.security.errors import SecurityConfigError
from controller.security.files import write_private

CONTROLLER_IDENTITY = "edgefleet_controller"
DEFAULT_MAX_PACKET_BYTES = 256 * 1024


@dataclass(frozen=True)
class KeyAndCertificate:
    key_pem: bytes
    certificate_pem: bytes
    serial_hex: str


def _load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key((ca_dir / CA_KEY_FILE).read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT_FILE).read_bytes())
    except (OSError, ValueError) as e:
        raise SecurityConfigError(f"fleet CA in {ca_dir} is unusable: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SecurityConfigError(f"{ca_dir / CA_KEY_FILE} is not an EC private key")
    return key, cert


def _issue(
    ca_dir: Path,
    common_name: str,
    *,
    usage: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName],
    validity_days: int,
) -> KeyAndCertificate:
    ca_key, ca_cert = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    serial = x509.random_serial_number()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyAndCertificate(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        serial_hex=format(serial, "x"),
    )


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_broker_certificate(ca_dir: Path, hosts: Sequence[str], *, validity_days: int = 825) -> KeyAndCertificate:
    """A server certificate for the broker, valid for every name or address in `hosts`."""
    if not hosts:
        raise SecurityConfigError("the broker certificate needs at least one host name or address")
    return _issue(
        ca_dir, hosts[0], usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=_general_names(hosts), validity_days=validity_days
    )


def issue_controller_certificate(ca_dir: Path, *, validity_days: int = 825) -> KeyAndCertificate:
    """The controller's client certificate; the ACL gives this identity the whole topic tree."""
    return _issue(
        ca_dir, CONTROLLER_IDENTITY, usage=ExtendedKeyUsageOID.CLIENT_AUTH, sans=(), validity_days=validity_days
    )


@dataclass(frozen=True)
class BrokerTlsPaths:
    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path


def write_broker_tls(ca_dir: Path, out_dir: Path, hosts: Sequence[str], *, crl_pem: str) -> BrokerTlsPaths:
    """Write the broker's key (0600), certificate, the fleet CA and an initial CRL into `out_dir`."""
    issued = issue_broker_certificate(ca_dir, hosts)
    paths = BrokerTlsPaths(out_dir / "ca.crt", out_dir / "broker.crt", out_dir / "broker.key", out_dir / "crl.pem")
    write_private(paths.key_file, issued.key_pem, 0o600)
    write_private(paths.cert_file, issued.certificate_pem, 0o644)
    write_private(paths.ca_file, (ca_dir / CA_CERT_FILE).read_bytes(), 0o644)
    write_private(paths.crl_file, crl_pem.encode("ascii"), 0o644)
    return paths


def device_listener_conf(
    tls: BrokerTlsPaths,
    *,
    port: int = 8883,
    bind_address: str = "0.0.0.0",
    with_crl: bool = True,
) -> str:
    """The `listener` block for devices: mutual TLS, certificate identity as username."""
    lines = [
        f"listener {port} {bind_address}",
        f"cafile {tls.ca_file}",
        f"certfile {tls.cert_file}",
        f"keyfile {tls.key_file}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
    ]
    if with_crl:
        lines.append(f"crlfile {tls.crl_file}")
    return "\n".join(lines) + "\n"


def broker_conf(
    tls: BrokerTlsPaths,
    *,
    acl_path: Path,
    password_path: Path | None,
    device_port: int = 8883,
    device_bind_address: str = "0.0.0.0",
    local_port: int | None = 1883,
    local_bind_address: str = "127.0.0.1",
    max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
    persistence_dir: Path | None = None,
) -> str:
    """A whole Mosquitto 2 configuration: a device listener with mutual TLS, and optionally a listener
    with passwords for the controller's bridge (loopback by default; a private address when the
    controller runs elsewhere)."""
    lines = [
        "# Generated by edgefleet (controller.security.broker_tls); edits are overwritten.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"max_packet_size {max_packet_bytes}",
        "max_inflight_messages 100",
        # The controller's persistent session queues the whole fleet's telemetry while it restarts;
        # Mosquitto's default of 1000 would drop the rest silently. Devices only ever queue assignments.
        "max_queued_messages 200000",
        f"acl_file {acl_path}",
    ]
    if password_path is not None:
        lines.append(f"password_file {password_path}")
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {persistence_dir}/"]
    lines.append("")
    lines.append(device_listener_conf(tls, port=device_port, bind_address=device_bind_address).rstrip())
    if local_port is not None:
        lines += ["", f"listener {local_port} {local_bind_address}"]
    return "\n".join(lines) + "\n"
