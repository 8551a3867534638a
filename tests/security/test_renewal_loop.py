"""The daemon's renewal loop with a real AgentSession on a real Mosquitto with mutual TLS.

The session connects with the enrolled certificate; the loop renews twice (the certificate is due from
day one: one-day validity). The second renewal retires the enrolled certificate, which the CRL then
lists. After the broker restarts with that CRL, the session reconnects by itself, which it can only do
if the loop made it load the renewed pair: the SSL context it connected with first still holds the
enrolled one in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from agent.daemon.renewal import RenewalLoop
from agent.enroll import ControllerUnreachable, Identity, enroll
from agent.mqtt import AgentSession, Outbox, SessionConfig
from agent.renewal import Renewed
from controller.app import create_app
from controller.auth import create_api_token
from controller.mqtt.mosquitto_auth import acl_file
from controller.security.broker_tls import CONTROLLER_IDENTITY, device_listener_conf, write_broker_tls
from controller.security.crl import install_crl
from controller.settings import Settings
from tests.provisioning.harness import ServedApp
from tests.services import HOST, Mosquitto, free_port, wait_until


class Accept:
    def receive_assignment(self, payload: bytes) -> None:
        pass


def test_the_loop_renews_and_the_session_reconnects_with_the_new_pair(
    tmp_path: Path, security_keyring: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    api_port = free_port()
    url = f"http://{HOST}:{api_port}"
    settings = Settings(state_dir=tmp_path / "controller", database_url=f"sqlite:///{tmp_path / 'c.db'}",
                        keys_dir=security_keyring, public_url=url, device_cert_validity_days=1)
    app = create_app(settings)
    served = ServedApp(app, api_port)
    served.start()
    session: AgentSession | None = None
    try:
        with app.state.ctx.session_factory() as db:
            _, admin = create_api_token(db, name="admin", role="admin")
            db.commit()
        api = TestClient(app)
        headers = {"Authorization": f"Bearer {admin}"}
        token = api.post("/api/v1/enrollment-tokens", json={}, headers=headers).json()["token"]
        identity = Identity(tmp_path / "device")
        enroll(identity.state_dir, url, token, requested_id="dev-loop-1")

        tls = write_broker_tls(settings.resolved_ca_dir, tmp_path / "broker-tls", [HOST, "localhost"],
                               crl_pem=app.state.ctx.ca.crl_pem([]))
        mqtt_port = free_port()
        broker = mosquitto_factory(acl=acl_file([CONTROLLER_IDENTITY]), allow_anonymous=False,
                                   extra_conf=device_listener_conf(tls, port=mqtt_port, bind_address=HOST))
        session = AgentSession(
            SessionConfig(HOST, mqtt_port, "dev-loop-1", ca_file=str(tls.ca_file), cert_file=str(identity.cert_path),
                          key_file=str(identity.key_path), reconnect_max_s=1.0),
            Outbox(tmp_path / "outbox"), Accept())
        session.start()
        wait_until(session.connected.is_set, timeout_s=20, message="first connection")

        renewed: list[Renewed] = []

        def use(result: Renewed) -> None:
            renewed.append(result)
            assert session is not None and session.reload_certificate()

        loop = RenewalLoop(identity, None, 86400.0, threading.Event(), use)
        assert loop.enabled
        assert loop.check_once() > 3600 and loop.check_once() > 3600
        assert [r.serial for r in renewed] == [renewed[0].serial, renewed[1].serial] and loop.last_error is None
        assert renewed[1].previous_serial == renewed[0].serial

        crl = api.get("/api/v1/ca/crl", headers=headers).text
        assert install_crl(crl.encode(), tls.ca_file.read_bytes(), tls.crl_file)  # lists the enrolled certificate
        session.connected.clear()
        broker.restart()
        wait_until(session.connected.is_set, timeout_s=30, message="reconnection with the renewed pair")

        served.stop()  # still due (one-day certificates): the child cannot reach the controller
        assert loop.check_once() == 3600.0 and loop.last_error and len(renewed) == 2
    finally:
        if session is not None:
            session.stop()
        served.stop()


def test_an_unreachable_controller_is_retried_sooner_than_the_daily_check(tmp_path: Path) -> None:
    calls: list[Any] = []

    def unreachable(identity: Identity, controller_url: str | None) -> Renewed | None:
        calls.append(controller_url)
        raise ControllerUnreachable("connection refused")

    loop = RenewalLoop(Identity(tmp_path), "http://127.0.0.1:9", 86400.0, threading.Event(),
                       lambda r: None, renew=unreachable, retry_s=600.0)
    assert loop.check_once() == 600.0
    assert calls == ["http://127.0.0.1:9"] and loop.last_error == "connection refused"
    assert not loop.enabled  # nothing enrolled in this folder: the daemon would not start the loop


def test_a_device_that_is_not_enrolled_waits_for_the_next_daily_check(tmp_path: Path) -> None:
    loop = RenewalLoop(Identity(tmp_path), None, 86400.0, threading.Event(), lambda r: None, retry_s=600.0)
    assert loop.check_once() > 600.0  # not retryable: running again soon cannot help
    assert loop.last_error is not None and "device key or certificate" in loop.last_error
