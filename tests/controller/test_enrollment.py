"""Enrollment end to end: token → CSR → certificate, MQTT credentials and pinned roots; a real Mosquitto
accepts the enrolled device and refuses it once revoked; one-time, expiry, class binding, rate limit."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.settings import Settings
from manifests.state import enroll as trusted_state_from_roots
from tests.controller.conftest import ControllerEnv, start_env
from tests.services import Mosquitto


def _csr(key: ec.EllipticCurvePrivateKey, cn: str = "whatever-the-device-wants") -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _token(env: ControllerEnv, **body: object) -> str:
    r = env.client.post("/api/v1/enrollment-tokens", json=body, headers=env.auth("admin"))
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _enroll(env: ControllerEnv, token: str, key: ec.EllipticCurvePrivateKey, *,
            hardware_class: str = "x86_64-avx2", **extra: object) -> object:
    body = {"token": token, "csr": _csr(key), "hardware_class": hardware_class,
            "hardware_profile": {"arch": "x86_64", "cpu_flags": ["avx2"], "memory_mb": 4096}, **extra}
    return env.client.post("/api/v1/enroll", json=body)


def _mqtt_connect(port: int, username: str, password: str) -> int:
    """CONNACK reason code of one connection attempt (0 = accepted)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username)
    client.username_pw_set(username, password)
    result: dict[str, int] = {}
    done = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
        result["rc"] = reason.value
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK within 10 s"
    finally:
        client.disconnect()
        client.loop_stop()
    return result["rc"]


@pytest.fixture
def broker_with_fleet(env: ControllerEnv, mosquitto_factory: Callable[..., Mosquitto],
                      tmp_path: Path) -> Iterator[tuple[Mosquitto, Callable[[], None]]]:
    """Mosquitto whose password file is the controller's export; call the second item to re-sync."""
    password_path = tmp_path / "fleet-passwords"

    def sync() -> None:
        r = env.client.get("/api/v1/broker/password-file", headers=env.auth("admin"))
        assert r.status_code == 200
        password_path.write_text(r.text)
        password_path.chmod(0o600)

    sync()
    broker = mosquitto_factory(allow_anonymous=False, extra_conf=f"password_file {password_path}")
    yield broker, sync


def test_enrolled_device_gets_identity_credentials_and_roots_then_revocation_cuts_it_off(
    env: ControllerEnv, broker_with_fleet: tuple[Mosquitto, Callable[[], None]]
) -> None:
    broker, sync = broker_with_fleet
    token = _token(env, tags=["site:lab", "canary"], hardware_class="x86_64-avx2", ttl_s=600)
    key = ec.generate_private_key(ec.SECP256R1())
    r = _enroll(env, token, key)
    assert r.status_code == 201, r.text
    answer = r.json()
    device_id = answer["device_id"]

    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ca = x509.load_pem_x509_certificate(answer["ca_certificate"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id  # not the CSR's CN
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert format(cert.serial_number, "x") == answer["certificate_serial"]
    assert answer["tags"] == ["canary", "site:lab"] and answer["hardware_class"] == "x86_64-avx2"
    assert answer["mqtt"]["username"] == device_id and answer["mqtt"]["topic_prefix"] == f"edgefleet/v1/{device_id}/"

    # The pinned roots are real TUF roots the agent's trust store accepts.
    state = trusted_state_from_roots(
        device_id, json.dumps(answer["director_root"]).encode(), json.dumps(answer["image_repository_root"]).encode(),
        datetime.now(timezone.utc),
    )
    assert state.device_id == device_id

    # The registry knows it, with tags from the token and the reported profile.
    d = env.client.get(f"/api/v1/devices/{device_id}", headers=env.auth("viewer")).json()
    assert d["status"] == "active" and d["hardware_profile"]["memory_mb"] == 4096 and d["tags"] == ["canary", "site:lab"]

    # The broker accepts the device with the credentials it was handed...
    sync()
    broker.restart()
    password = answer["mqtt"]["password"]
    assert _mqtt_connect(broker.port, device_id, password) == 0
    assert _mqtt_connect(broker.port, device_id, "wrong-password") != 0

    # ...and refuses it once revoked.
    r = env.client.post(f"/api/v1/devices/{device_id}/revoke", json={"reason": "stolen"}, headers=env.auth("admin"))
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    sync()
    broker.restart()
    assert _mqtt_connect(broker.port, device_id, password) != 0

    # Its certificate is on the CA-signed revocation list.
    crl = x509.load_pem_x509_crl(env.client.get("/api/v1/ca/crl", headers=env.auth("viewer")).text.encode())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    # A revoked device cannot come back with a fresh token and the same key.
    r = _enroll(env, _token(env), key)
    assert r.status_code == 403 and "revoked" in r.json()["error"]["message"]
    history = env.client.get(f"/api/v1/devices/{device_id}/history", headers=env.auth("viewer")).json()
    assert [e["kind"] for e in history["items"]] == ["revoked", "enrolled"]


def test_enrollment_token_is_one_time_and_checked(env: ControllerEnv) -> None:
    token = _token(env, hardware_class="jetson-orin-nano")
    wrong_class = _enroll(env, token, ec.generate_private_key(ec.SECP256R1()), hardware_class="x86_64-avx2")
    assert wrong_class.status_code == 403
    first = _enroll(env, token, ec.generate_private_key(ec.SECP256R1()), hardware_class="jetson-orin-nano")
    assert first.status_code == 201, first.text  # the refused attempt did not burn the token
    again = _enroll(env, token, ec.generate_private_key(ec.SECP256R1()), hardware_class="jetson-orin-nano")
    assert again.status_code == 401 and "already used" in again.json()["error"]["message"]
    assert _enroll(env, "efe_unknown-token", ec.generate_private_key(ec.SECP256R1())).status_code == 401

    listed = env.client.get("/api/v1/enrollment-tokens", headers=env.auth("admin")).json()["items"]
    assert listed[0]["used_by_device"] == first.json()["device_id"] and "token" not in listed[0]


def test_expired_and_revoked_enrollment_tokens_are_refused(env: ControllerEnv) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from controller.db.base import utcnow
    from controller.db.models import EnrollmentToken

    expired = _token(env, note="expires")
    with env.ctx.session_factory() as session:
        row = session.scalars(select(EnrollmentToken).where(EnrollmentToken.note == "expires")).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    r = _enroll(env, expired, ec.generate_private_key(ec.SECP256R1()))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]

    revoked = _token(env, note="revoke me")
    token_id = env.client.get("/api/v1/enrollment-tokens", headers=env.auth("admin")).json()["items"][0]["id"]
    assert env.client.delete(f"/api/v1/enrollment-tokens/{token_id}", headers=env.auth("admin")).status_code == 200
    r = _enroll(env, revoked, ec.generate_private_key(ec.SECP256R1()))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_bad_keys_and_csrs_are_refused(env: ControllerEnv) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(key)
    # A CSR whose signature does not verify: its public key swapped for another one.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    forged = x509.load_pem_x509_csr(csr.encode())
    builder = x509.CertificateSigningRequestBuilder().subject_name(forged.subject)
    forged_pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    tampered = forged_pem.replace(forged_pem.splitlines()[3], forged_pem.splitlines()[3][::-1])
    for body in (
        {"csr": "not a csr"},
        {"csr": tampered},
        {"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"},
        {"csr": csr, "public_key": other.public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()},
        {"csr": csr, "hardware_class": "Not A Class!"},
        {"csr": csr, "device_id": "../escape"},
    ):
        token = _token(env)
        payload = {"token": token, "hardware_class": "x86_64-avx2", "hardware_profile": {}, **body}
        r = env.client.post("/api/v1/enroll", json=payload)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] in ("invalid_input", "invalid_request")
    # A bare public key (no CSR) is accepted too.
    pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    r = env.client.post("/api/v1/enroll", json={"token": _token(env), "public_key": pem,
                                                 "hardware_class": "x86_64-avx2", "device_id": "cam-0042"})
    assert r.status_code == 201 and r.json()["device_id"] == "cam-0042"
    r = env.client.post("/api/v1/enroll", json={"token": _token(env), "csr": csr,
                                                 "hardware_class": "x86_64-avx2", "device_id": "cam-0042"})
    assert r.status_code == 409


def test_enrollment_is_rate_limited(controller_settings: Settings) -> None:
    settings = controller_settings.model_copy(update={"enrollment_burst": 3, "enrollment_rate_per_minute": 1.0})
    with start_env(settings) as env:
        codes = [env.client.post("/api/v1/enroll", json={"token": f"efe_guess-{i}", "csr": "x",
                                                          "hardware_class": "x"}).status_code for i in range(5)]
        assert 429 not in codes[:3]
        assert codes[3:] == [429, 429]
        r = env.client.post("/api/v1/enroll", json={"token": "efe_x", "csr": "x", "hardware_class": "x"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limited"
