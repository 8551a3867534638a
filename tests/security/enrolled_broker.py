"""A served controller with an admin token, one device enrolled through its API, and a Mosquitto whose
device listener requires certificates from the controller's CA: the common start of the certificate
tests that need a real broker (renewal, CRL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from agent.enroll import Identity, enroll
from controller.app import create_app
from controller.auth import create_api_token
from controller.mqtt.mosquitto_auth import acl_file
from controller.security.broker_tls import (
    CONTROLLER_IDENTITY,
    BrokerTlsPaths,
    device_listener_conf,
    write_broker_tls,
)
from controller.settings import Settings
from tests.provisioning.harness import ServedApp
from tests.services import HOST, Mosquitto, free_port


@dataclass
class EnrolledOnBroker:
    served: ServedApp
    api: TestClient  # no lifespan: the served app runs it
    headers: dict[str, str]  # an admin's
    identity: Identity
    tls: BrokerTlsPaths
    broker: Mosquitto
    mqtt_port: int


@contextmanager
def enrolled_device_on_mtls_broker(tmp_path: Path, keys_dir: Path, mosquitto_factory: Callable[..., Mosquitto],
                                   device_id: str, **settings: Any) -> Iterator[EnrolledOnBroker]:
    api_port = free_port()
    url = f"http://{HOST}:{api_port}"
    app = create_app(Settings(state_dir=tmp_path / "controller", database_url=f"sqlite:///{tmp_path / 'c.db'}",
                              keys_dir=keys_dir, public_url=url, **settings))
    served = ServedApp(app, api_port)
    served.start()
    try:
        with app.state.ctx.session_factory() as db:
            _, admin = create_api_token(db, name="admin", role="admin")
            db.commit()
        api = TestClient(app)
        headers = {"Authorization": f"Bearer {admin}"}
        token = api.post("/api/v1/enrollment-tokens", json={}, headers=headers).json()["token"]
        identity = Identity(tmp_path / "device")
        enroll(identity.state_dir, url, token, requested_id=device_id)
        tls = write_broker_tls(app.state.ctx.settings.resolved_ca_dir, tmp_path / "broker-tls", [HOST, "localhost"],
                               crl_pem=app.state.ctx.ca.crl_pem([]))
        mqtt_port = free_port()
        broker = mosquitto_factory(acl=acl_file([CONTROLLER_IDENTITY]), allow_anonymous=False,
                                   extra_conf=device_listener_conf(tls, port=mqtt_port, bind_address=HOST))
        yield EnrolledOnBroker(served, api, headers, identity, tls, broker, mqtt_port)
    finally:
        served.stop()
