"""`edgefleet-agent enroll` against a served controller: the key is made on the device, the answer is
checked before anything is trusted, and failures leave no half-enrolled state behind."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

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
