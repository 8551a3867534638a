"""`edgefleet-agent enroll` and `renew` against a served controller: the key is made on the device, the
answer is checked before anything is trusted, failures leave no half-enrolled state behind, and a
renewal stopped at any step leaves a key and certificate that belong together."""

from __future__ import annotations

import argparse
import json
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import renewal as renewal_cli
from agent.cli import main as agent_main
from agent.enroll import (
    BadEnrollmentAnswer,
    ControllerUnreachable,
    EnrollmentRefused,
    Identity,
    check_answer,
    enroll,
    identity_problems,
)
from agent.renewal import load_pair, renew, renew_if_due, renewal_due
from controller.app import create_app
from controller.auth import create_api_token
from controller.enrollment.ca import FleetCA
from controller.settings import Settings
from tests.provisioning.harness import ServedApp
from tests.services import HOST, free_port


class Controller:
    def __init__(self, tmp_path: Path, keys: Path) -> None:
        self.port = free_port()
        self.settings = Settings(state_dir=tmp_path / "controller", database_url=f"sqlite:///{tmp_path / 'c.db'}",
                                 keys_dir=keys, public_url=f"http://{HOST}:{self.port}")
        self.app = create_app(self.settings)
        self.served = ServedApp(self.app, self.port)
        self.url = f"http://{HOST}:{self.port}"

    def token(self, **body: object) -> str:
        from fastapi.testclient import TestClient

        with self.app.state.ctx.session_factory() as session:
            _, admin = create_api_token(session, name=f"admin-{free_port()}", role="admin")
            session.commit()
        client = TestClient(self.app)  # no lifespan: the served app already runs it
        r = client.post("/api/v1/enrollment-tokens", json=body, headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@pytest.fixture
def controller(tmp_path: Path, provisioning_keys: Path) -> Iterator[Controller]:
    c = Controller(tmp_path, provisioning_keys)
    c.served.start()
    try:
        yield c
    finally:
        c.served.stop()


def test_enroll_writes_identity_with_private_modes_and_is_idempotent(controller: Controller, tmp_path: Path) -> None:
    state = tmp_path / "device"
    token = controller.token(tags=["site:test"])
    device_id, fresh = enroll(state, controller.url, token, requested_id="dev-enroll-1")
    assert (device_id, fresh) == ("dev-enroll-1", True)
    ident = Identity(state)
    for path, mode in ((ident.key_path, 0o600), (ident.password_path, 0o600), (ident.trust_path, 0o600),
                       (ident.cert_path, 0o644), (ident.enrollment_path, 0o644)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert stat.S_IMODE(ident.folder.stat().st_mode) == 0o700
    record = json.loads(ident.enrollment_path.read_text())
    assert record["tags"] == ["site:test"] and record["mqtt"]["username"] == "dev-enroll-1"
    secret = ident.password_path.read_text()
    assert len(secret) >= 32 and secret not in ident.enrollment_path.read_text()
    assert identity_problems(state) == []
    ident.key_path.chmod(0o640)
    assert [p for p in identity_problems(state) if "device.key has mode 0640" in p]
    ident.key_path.chmod(0o600)
    # Again: nothing is sent (the spent token would be refused), the same identity is reported.
    assert enroll(state, controller.url, token) == ("dev-enroll-1", False)


def test_refused_token_leaves_no_enrollment_and_the_cli_says_why(
    controller: Controller, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "device"
    token_file = tmp_path / "token"
    token_file.write_text("efe_" + "n" * 43)
    code = agent_main(["enroll", "--controller", controller.url, "--state-dir", str(state),
                       "--token-file", str(token_file)])
    assert code == 1
    assert "refused enrollment (401)" in capsys.readouterr().err
    assert Identity(state).enrolled() is None
    assert stat.S_IMODE(Identity(state).key_path.stat().st_mode) == 0o600  # kept for the retry
    with pytest.raises(EnrollmentRefused):
        enroll(state, controller.url, "efe_" + "n" * 43)


def test_spent_token_is_refused_for_a_second_device(controller: Controller, tmp_path: Path) -> None:
    token = controller.token()
    enroll(tmp_path / "first", controller.url, token)
    with pytest.raises(EnrollmentRefused, match="already used"):
        enroll(tmp_path / "second", controller.url, token)


def test_unreachable_controller_is_retryable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ControllerUnreachable) as e:
        enroll(tmp_path / "d", f"http://{HOST}:{free_port()}", "efe_" + "x" * 43, timeout_s=2)
    assert e.value.retryable
    token_file = tmp_path / "token"
    token_file.write_text("efe_" + "x" * 43)
    assert agent_main(["enroll", "--controller", f"http://{HOST}:{free_port()}", "--state-dir", str(tmp_path / "d"),
                       "--token-file", str(token_file), "--timeout-s", "2"]) == 75


def _answer(ca: FleetCA, device_id: str, key: ec.EllipticCurvePrivateKey) -> dict[str, object]:
    issued = ca.issue(device_id, key.public_key(), validity_days=5)
    return {
        "device_id": device_id, "certificate": issued.pem, "ca_certificate": ca.certificate_pem,
        "mqtt": {"host": HOST, "port": 8883, "tls": True, "username": device_id, "password": "p" * 40},
        "image_repository_root": {}, "director_root": {},
    }


def test_answers_that_do_not_bind_our_key_are_refused(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path / "ca")
    ours, theirs = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    check_answer(_answer(ca, "dev-a", ours), ours)  # the well-formed answer passes

    with pytest.raises(BadEnrollmentAnswer, match="does not carry this device's public key"):
        check_answer(_answer(ca, "dev-a", theirs), ours)
    renamed = _answer(ca, "dev-a", ours) | {"device_id": "dev-b"}
    with pytest.raises(BadEnrollmentAnswer, match="does not name dev-b"):
        check_answer(renamed, ours)
    other_ca = FleetCA.load_or_create(tmp_path / "other")
    swapped = _answer(ca, "dev-a", ours) | {"ca_certificate": other_ca.certificate_pem}
    with pytest.raises(BadEnrollmentAnswer, match="not issued by the fleet CA"):
        check_answer(swapped, ours)
    for broken in ({"device_id": "../x"}, {"certificate": "nope"}, {"mqtt": {"host": HOST}},
                   {"director_root": None}):
        with pytest.raises(BadEnrollmentAnswer):
            check_answer(_answer(ca, "dev-a", ours) | broken, ours)


# Certificate renewal: `edgefleet-agent renew` against the same served controller.

RENEWAL_STEPS = ("adopt_pair_written", "adopt_current_linked", "adopt_key_linked", "adopted", "requesting",
                 "answered", "pair_written", "swapped", "done")


class _Stop(Exception):
    """Stands in for a power cut: the run ends where it is."""


def _enrolled(controller: Controller, state: Path, device_id: str) -> Identity:
    enroll(state, controller.url, controller.token(), requested_id=device_id)
    return Identity(state)


def _admin(controller: Controller) -> dict[str, str]:
    with controller.app.state.ctx.session_factory() as session:
        _, secret = create_api_token(session, name=f"admin-{free_port()}", role="admin")
        session.commit()
    return {"Authorization": f"Bearer {secret}"}


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def test_renewal_rotates_the_key_and_swaps_the_pair(controller: Controller, tmp_path: Path) -> None:
    ident = _enrolled(controller, tmp_path / "device", "dev-renew-a")
    old_key_pem = ident.key_path.read_bytes()
    _, old_cert = load_pair(ident)

    result = renew(ident)  # the controller URL recorded at enrollment
    key, cert = load_pair(ident)
    assert ident.key_path.read_bytes() != old_key_pem
    assert result.serial == _serial(cert) and result.previous_serial == _serial(old_cert)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ident.ca_path.read_bytes()))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-renew-a"
    assert ident.key_path.is_symlink() and ident.cert_path.is_symlink()
    assert stat.S_IMODE(ident.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ident.cert_path.stat().st_mode) == 0o644
    assert identity_problems(ident.state_dir) == []
    assert [p.name for p in (ident.folder / "pairs").iterdir()] == [result.serial]  # the old key is gone
    assert json.loads(ident.enrollment_path.read_text())["certificate_serial"] == result.serial
    # The controller authenticates the device as before and records the new certificate.
    from fastapi.testclient import TestClient

    detail = TestClient(controller.app).get("/api/v1/devices/dev-renew-a", headers=_admin(controller)).json()
    assert detail["cert_serial"] == result.serial
    # And again, from the link layout this time.
    again = renew(ident)
    assert again.previous_serial == result.serial and load_pair(ident)[1].serial_number != cert.serial_number


@pytest.mark.parametrize("stop_at", RENEWAL_STEPS)
def test_a_renewal_stopped_at_any_step_leaves_a_matching_pair_and_the_retry_succeeds(
    controller: Controller, tmp_path: Path, stop_at: str
) -> None:
    ident = _enrolled(controller, tmp_path / "device", f"dev-stop-{RENEWAL_STEPS.index(stop_at)}")
    _, old_cert = load_pair(ident)

    def hook(name: str) -> None:
        if name == stop_at:
            raise _Stop(name)

    with pytest.raises(_Stop):
        renew(ident, step=hook)
    _, cert = load_pair(ident)  # raises unless key and certificate belong together
    swapped = RENEWAL_STEPS.index(stop_at) >= RENEWAL_STEPS.index("swapped")
    assert (cert.serial_number != old_cert.serial_number) == swapped
    assert identity_problems(ident.state_dir) == []
    # The pair on disk is one the controller still accepts: the retry is proven with it.
    result = renew(ident)
    assert result.previous_serial == _serial(cert)
    assert load_pair(ident)[1].serial_number != cert.serial_number


def test_renewal_is_refused_for_a_revoked_device_and_changes_nothing(
    controller: Controller, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ident = _enrolled(controller, tmp_path / "device", "dev-renew-r")
    from fastapi.testclient import TestClient

    r = TestClient(controller.app).post("/api/v1/devices/dev-renew-r/revoke", json={"reason": "stolen"},
                                        headers=_admin(controller))
    assert r.status_code == 200
    before = (ident.key_path.read_bytes(), ident.cert_path.read_bytes())
    with pytest.raises(EnrollmentRefused, match=r"refused certificate renewal \(401\).*revoked"):
        renew(ident)
    assert (ident.key_path.read_bytes(), ident.cert_path.read_bytes()) == before
    parser = argparse.ArgumentParser()
    renewal_cli.add_arguments(parser)
    assert renewal_cli.run(parser.parse_args(["--state-dir", str(ident.state_dir)])) == 1
    assert "certificate renewal failed" in capsys.readouterr().err


def test_renew_subcommand_renews_only_when_due_with_if_due(
    controller: Controller, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ident = _enrolled(controller, tmp_path / "device", "dev-renew-c")
    parser = argparse.ArgumentParser()
    renewal_cli.add_arguments(parser)
    args = ["--state-dir", str(ident.state_dir), "--controller", controller.url]
    assert renewal_cli.run(parser.parse_args([*args, "--if-due"])) == 0
    assert json.loads(capsys.readouterr().out) == {"renewed": False, "state_dir": str(ident.state_dir)}
    assert renewal_cli.run(parser.parse_args([*args, "--if-due", "--min-days-left", "400"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["renewed"] is True and out["serial"] == _serial(load_pair(ident)[1])
    assert renew_if_due(ident, controller_url=controller.url) is None


def test_renewal_due_after_two_thirds_of_the_lifetime_or_near_expiry(tmp_path: Path) -> None:
    ca = FleetCA.load_or_create(tmp_path / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = x509.load_pem_x509_certificate(ca.issue("dev-a", key.public_key(), validity_days=90).pem.encode())
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    lifetime = end - start
    assert not renewal_due(cert, start + timedelta(days=1), min_days_left=0)
    assert not renewal_due(cert, start + lifetime * 0.66, min_days_left=0)
    assert renewal_due(cert, start + lifetime * 0.67, min_days_left=0)
    assert renewal_due(cert, end + timedelta(days=1))  # already expired: still "due" (the controller decides)
    assert not renewal_due(cert, start + timedelta(days=10), fraction=0.9, min_days_left=30)
    assert renewal_due(cert, end - timedelta(days=29), fraction=0.99, min_days_left=30)
    with pytest.raises(ValueError):
        renewal_due(cert, start, fraction=0)
    with pytest.raises(ValueError):
        renewal_due(cert, datetime(2026, 1, 1))
