"""Certificate renewal on the controller (SQLite and PostgreSQL): the new certificate binds the CSR's key,
the old one stays valid until the new one is seen in use, retired and revoked keys stay barred, the CRL
lists superseded certificates, and every refusal says why."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, text

from controller.db import migrate as db_migrate
from controller.enrollment.renewal import proof_message
from controller.settings import Settings
from tests.controller.conftest import ControllerEnv, start_env


def _csr(key: ec.EllipticCurvePrivateKey, cn: str) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Dev:
    device_id: str
    password: str
    key: ec.EllipticCurvePrivateKey
    cert_pem: str

    @property
    def basic(self) -> dict[str, str]:
        raw = f"{self.device_id}:{self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    @property
    def serial(self) -> str:
        return format(x509.load_pem_x509_certificate(self.cert_pem.encode()).serial_number, "x")

    def body(self, new_key: ec.EllipticCurvePrivateKey, *, cn: str | None = None,
             signer: ec.EllipticCurvePrivateKey | None = None, csr: str | None = None) -> dict[str, str]:
        csr = csr or _csr(new_key, cn or self.device_id)
        proof = (signer or self.key).sign(proof_message(self.device_id, csr), ec.ECDSA(hashes.SHA256()))
        return {"csr": csr, "certificate": self.cert_pem, "proof": base64.b64encode(proof).decode()}


def _enroll(env: ControllerEnv, device_id: str, key: ec.EllipticCurvePrivateKey | None = None) -> object:
    r = env.client.post("/api/v1/enrollment-tokens", json={}, headers=env.auth("admin"))
    assert r.status_code == 201, r.text
    key = key or ec.generate_private_key(ec.SECP256R1())
    return env.client.post("/api/v1/enroll", json={
        "token": r.json()["token"], "csr": _csr(key, device_id), "hardware_class": "x86_64", "device_id": device_id})


def _device(env: ControllerEnv, device_id: str) -> Dev:
    key = ec.generate_private_key(ec.SECP256R1())
    r = _enroll(env, device_id, key)
    assert r.status_code == 201, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    return Dev(device_id, body["mqtt"]["password"], key, body["certificate"])


def _renew(env: ControllerEnv, dev: Dev, new_key: ec.EllipticCurvePrivateKey, **kw: object) -> Dev:
    r = env.client.post("/api/v1/device/certificate/renew", json=dev.body(new_key, **kw), headers=dev.basic)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return Dev(dev.device_id, dev.password, new_key, r.json()["certificate"])


def _crl_serials(env: ControllerEnv) -> set[str]:
    r = env.client.get("/api/v1/ca/crl", headers=env.auth("viewer"))
    assert r.status_code == 200
    return {format(e.serial_number, "x") for e in x509.load_pem_x509_crl(r.text.encode())}


def _as_proxy(dev: Dev) -> dict[str, str]:
    return {"X-Client-Certificate": urllib.parse.quote(dev.cert_pem)}


@pytest.fixture
def env(tmp_path: Path, db_url: str, keyring_dir: Path) -> Iterator[ControllerEnv]:
    settings = Settings(state_dir=tmp_path / "state", database_url=db_url, keys_dir=keyring_dir,
                        trust_proxy_client_certificate=True, renewal_burst=20)
    with start_env(settings) as started:
        yield started


def test_renewal_issues_a_certificate_for_the_new_key_and_keeps_the_old_one_until_the_new_one_is_used(
    env: ControllerEnv,
) -> None:
    old = _device(env, "dev-renew-1")
    new_key = ec.generate_private_key(ec.SECP256R1())
    r = env.client.post("/api/v1/device/certificate/renew", json=old.body(new_key), headers=old.basic)
    assert r.status_code == 200, r.text
    answer = r.json()
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ca = x509.load_pem_x509_certificate(answer["ca_certificate"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.public_key() == new_key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-renew-1"
    assert answer["previous_serial"] == old.serial and answer["key_rotated"] is True
    new = Dev(old.device_id, old.password, new_key, answer["certificate"])

    detail = env.client.get("/api/v1/devices/dev-renew-1", headers=env.auth("viewer")).json()
    assert detail["cert_serial"] == new.serial
    history = env.client.get("/api/v1/devices/dev-renew-1/history", headers=env.auth("viewer")).json()["items"]
    renewed = [e for e in history if e["kind"] == "certificate_renewed"]
    assert renewed and renewed[0]["detail"]["previous_serial"] == old.serial
    assert renewed[0]["detail"]["cert_serial"] == new.serial

    # Overlap: the old certificate still authenticates (the device may not have stored the new one yet),
    # and neither is on the CRL.
    assert env.client.get("/api/v1/device/self", headers=_as_proxy(old)).json()["cert_serial"] == new.serial
    assert env.client.get("/api/v1/device/self", headers=old.basic).status_code == 200
    assert not {old.serial, new.serial} & _crl_serials(env)
    # The new certificate seen in use retires the old one, on the API and on the CRL.
    assert env.client.get("/api/v1/device/self", headers=_as_proxy(new)).json()["cert_serial"] == new.serial
    r = env.client.get("/api/v1/device/self", headers=_as_proxy(old))
    assert r.status_code == 401 and "superseded" in r.json()["error"]["message"]
    assert old.serial in _crl_serials(env) and new.serial not in _crl_serials(env)


def test_a_lost_answer_is_superseded_by_the_retry_and_only_two_certificates_stay_valid(env: ControllerEnv) -> None:
    holder = _device(env, "dev-renew-2")
    lost = _renew(env, holder, ec.generate_private_key(ec.SECP256R1()))  # never reached the device
    retry = _renew(env, holder, ec.generate_private_key(ec.SECP256R1()))
    assert lost.serial in _crl_serials(env)
    assert env.client.get("/api/v1/device/self", headers=_as_proxy(lost)).status_code == 401
    assert env.client.get("/api/v1/device/self", headers=_as_proxy(holder)).status_code == 200
    # The next renewal is proven with the new key: from then on the first certificate is retired too.
    third = _renew(env, retry, ec.generate_private_key(ec.SECP256R1()))
    assert holder.serial in _crl_serials(env)
    r = env.client.post("/api/v1/device/certificate/renew", json=holder.body(ec.generate_private_key(ec.SECP256R1())),
                        headers=holder.basic)
    assert r.status_code == 403 and "superseded" in r.json()["error"]["message"]
    assert env.client.get("/api/v1/device/self", headers=_as_proxy(third)).status_code == 200


def test_refusals_name_the_reason(env: ControllerEnv) -> None:
    dev = _device(env, "dev-renew-3")
    other = _device(env, "dev-renew-4")
    new_key = ec.generate_private_key(ec.SECP256R1())
    url = "/api/v1/device/certificate/renew"

    r = env.client.post(url, json=dev.body(new_key, cn="dev-renew-4"), headers=dev.basic)
    assert r.status_code == 403 and "names ['dev-renew-4']" in r.json()["error"]["message"]
    # Another device's credential with this device's certificate and proof: the CSR names the caller's victim.
    r = env.client.post(url, json=dev.body(new_key), headers=other.basic)
    assert r.status_code == 403 and "belongs to device dev-renew-4" in r.json()["error"]["message"]

    csr_der = bytearray(x509.load_pem_x509_csr(_csr(new_key, dev.device_id).encode()).public_bytes(
        serialization.Encoding.DER))
    csr_der[-5] ^= 0x01  # inside the signature
    tampered = "-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(csr_der)).decode() + \
        "-----END CERTIFICATE REQUEST-----\n"
    r = env.client.post(url, json=dev.body(new_key, csr=tampered), headers=dev.basic)
    assert r.status_code == 422 and "signature does not verify" in r.json()["error"]["message"]

    r = env.client.post(url, json=dev.body(new_key, signer=new_key), headers=dev.basic)
    assert r.status_code == 403 and "proof does not verify" in r.json()["error"]["message"]
    r = env.client.post(url, json=dev.body(other.key), headers=dev.basic)
    assert r.status_code == 403 and "belongs to device dev-renew-4" in r.json()["error"]["message"]
    r = env.client.post(url, json=dev.body(new_key) | {"certificate": other.cert_pem}, headers=dev.basic)
    assert r.status_code == 403 and "not issued to device dev-renew-3" in r.json()["error"]["message"]
    r = env.client.post(url, json=dev.body(new_key), headers={"Authorization": "Bearer " + env.tokens["admin"]})
    assert r.status_code == 401

    # A key the device renewed away from is barred for good, for renewal and for enrollment.
    renewed = _renew(env, dev, new_key)
    r = env.client.post(url, json=renewed.body(dev.key), headers=dev.basic)
    assert r.status_code == 403 and "retired" in r.json()["error"]["message"]
    same = env.client.post(url, json=renewed.body(renewed.key), headers=dev.basic)
    assert same.status_code == 200 and same.json()["key_rotated"] is False  # re-certifying the current key
    r = _enroll(env, "dev-renew-5", dev.key)
    assert r.status_code in (403, 409) and "dev-renew-3" in r.json()["error"]["message"]  # type: ignore[attr-defined]


def test_a_revoked_device_renews_nothing_and_all_its_certificates_are_on_the_crl(env: ControllerEnv) -> None:
    dev = _device(env, "dev-renew-6")
    renewed = _renew(env, dev, ec.generate_private_key(ec.SECP256R1()))
    r = env.client.post("/api/v1/devices/dev-renew-6/revoke", json={"reason": "stolen"}, headers=env.auth("admin"))
    assert r.status_code == 200
    for creds in (dev.basic, _as_proxy(dev), _as_proxy(renewed)):
        r = env.client.post("/api/v1/device/certificate/renew",
                            json=renewed.body(ec.generate_private_key(ec.SECP256R1())), headers=creds)
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert {dev.serial, renewed.serial} <= _crl_serials(env)
    r = _enroll(env, "dev-renew-7", renewed.key)
    assert r.status_code == 403 and "revoked device dev-renew-6" in r.json()["error"]["message"]  # type: ignore[attr-defined]


def test_renewal_is_rate_limited_per_device(tmp_path: Path, keyring_dir: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", database_url=f"sqlite:///{tmp_path / 'c.db'}",
                        keys_dir=keyring_dir, renewal_burst=2, renewal_rate_per_minute=0.01)
    with start_env(settings) as env:
        dev = _device(env, "dev-renew-8")
        dev = _renew(env, dev, ec.generate_private_key(ec.SECP256R1()))
        dev = _renew(env, dev, ec.generate_private_key(ec.SECP256R1()))
        r = env.client.post("/api/v1/device/certificate/renew",
                            json=dev.body(ec.generate_private_key(ec.SECP256R1())), headers=dev.basic)
        assert r.status_code == 429 and "Retry-After" in r.headers
        assert "too many certificate renewals by device dev-renew-8" in r.json()["error"]["message"]


def test_migration_records_the_certificates_of_devices_enrolled_before_it(db_url: str) -> None:
    engine = create_engine(db_url)
    db_migrate.upgrade(engine, "0003_rollouts")
    with engine.begin() as c:
        c.execute(text("INSERT INTO devices (id, status, hardware_class, hardware_profile, enrolled_at, cert_serial,"
                       " cert_not_after, public_key_sha256, mqtt_username, mqtt_password_hash, online) VALUES"
                       " ('dev-old', 'active', 'x86', '{}', '2026-01-01 00:00:00+00:00', 'abc123',"
                       " '2027-01-01 00:00:00+00:00', :k, 'dev-old', '', false)"), {"k": "f" * 64})
    db_migrate.upgrade(engine)
    with engine.connect() as c:
        rows = c.execute(text("SELECT serial, device_id, public_key_sha256 FROM device_certificates")).all()
    assert [tuple(r) for r in rows] == [("abc123", "dev-old", "f" * 64)]
    engine.dispose()
