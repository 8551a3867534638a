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

from agent.daemon.renewal import RenewalLoop
from agent.enroll import ControllerUnreachable, Identity
from agent.mqtt import AgentSession, Outbox, SessionConfig
from agent.renewal import Renewed
from controller.security.crl import install_crl
from tests.security.enrolled_broker import enrolled_device_on_mtls_broker
from tests.services import HOST, Mosquitto, wait_until


class Accept:
    def receive_assignment(self, payload: bytes) -> None:
        pass


def test_the_loop_renews_and_the_session_reconnects_with_the_new_pair(
    tmp_path: Path, security_keyring: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    session: AgentSession | None = None
    with enrolled_device_on_mtls_broker(tmp_path, security_keyring, mosquitto_factory, "dev-loop-1",
                                        device_cert_validity_days=1) as env:
        identity, tls = env.identity, env.tls
        try:
            session = AgentSession(
                SessionConfig(HOST, env.mqtt_port, "dev-loop-1", ca_file=str(tls.ca_file),
                              cert_file=str(identity.cert_path), key_file=str(identity.key_path), reconnect_max_s=1.0),
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

            crl = env.api.get("/api/v1/ca/crl", headers=env.headers).text
            assert install_crl(crl.encode(), tls.ca_file.read_bytes(), tls.crl_file)  # lists the enrolled certificate
            session.connected.clear()
            env.broker.restart()
            wait_until(session.connected.is_set, timeout_s=30, message="reconnection with the renewed pair")

            env.served.stop()  # still due (one-day certificates): the child cannot reach the controller
            assert loop.check_once() == 3600.0 and loop.last_error and len(renewed) == 2
        finally:
            if session is not None:
                session.stop()


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
