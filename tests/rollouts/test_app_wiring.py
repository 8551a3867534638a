"""The controller app runs its own rollout engine when it has a broker and a director key.

An operator's `POST /api/v1/rollouts` on a plain `create_app(settings)` must end in a signed, retained
assignment on the device's topic: no wiring by the caller.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from fastapi.testclient import TestClient
from sqlalchemy import select

from controller.app import create_app
from controller.auth import create_api_token
from controller.db.models import Device, DeviceTag, ModelRelease
from controller.settings import Settings
from manifests.keyring import Keyring
from tests.models import SampleModel
from tests.services import Mosquitto, wait_until


def _settings(tmp_path: Path, broker: Mosquitto | None) -> Settings:
    state = tmp_path / "state"
    Keyring.create(state / "keys")
    return Settings(
        state_dir=state,
        database_url=f"sqlite:///{tmp_path / 'controller.db'}",
        mqtt_bridge=broker is not None,
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port if broker is not None else 1883,
        development_mode=True,
    )


def test_without_a_broker_the_rollout_routes_say_why(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, None))
    with TestClient(app) as client:
        with app.state.ctx.session_factory() as session:
            _, token = create_api_token(session, name="olivia", role="operator")
            session.commit()
        response = client.get("/api/v1/rollouts", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 503, response.text
        assert "rollout" in response.text


def test_app_signs_and_publishes_assignments_for_a_new_rollout(
    tmp_path: Path, mosquitto: Mosquitto, digits_mlp: SampleModel
) -> None:
    app = create_app(_settings(tmp_path, mosquitto))
    received: dict[str, bytes] = {}
    got = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received[msg.topic] = msg.payload
        got.set()

    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watcher")
    watcher.on_message = on_message
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe("edgefleet/v1/+/assignment", qos=1)
    watcher.loop_start()
    try:
        with TestClient(app) as client:
            ctx = app.state.ctx
            assert "rollout_engine" in ctx.extras
            with ctx.session_factory() as session:
                _, token = create_api_token(session, name="olivia", role="operator")
                device = Device(
                    id="dev-a", hardware_class="x86-avx2", cert_serial=uuid.uuid4().hex,
                    cert_not_after=datetime.now(timezone.utc) + timedelta(days=30), public_key_sha256="0" * 64,
                    mqtt_username="dev-a", mqtt_password_hash="x", online=True,
                )
                device.tags = [DeviceTag(tag="lab")]
                session.add(device)
                session.commit()
            auth = {"Authorization": f"Bearer {token}"}
            files = {
                "model": ("model.onnx", digits_mlp.path.read_bytes(), "application/octet-stream"),
                "golden": ("golden.npz", digits_mlp.golden_path.read_bytes(), "application/octet-stream"),
            }
            uploaded = client.post(
                "/api/v1/models", files=files, data={"name": "digits", "version": "1"}, headers=auth
            )
            assert uploaded.status_code in (200, 201, 202), uploaded.text

            def published() -> bool:
                with ctx.session_factory() as session:
                    row = session.scalar(select(ModelRelease).where(ModelRelease.name == "digits"))
                    assert row is None or row.status not in ("failed", "awaiting_signature"), row.error
                    return row is not None and row.status == "published"

            wait_until(published, timeout_s=240, message="release published")
            body = {
                "id": "digits-1",
                "release": {"model": "digits", "version": "1"},
                "selector": {"tags": ["lab"]},
                "waves": [{"percent": 100, "soak_s": 0}],
            }
            created = client.post("/api/v1/rollouts", json=body, headers=auth)
            assert created.status_code in (200, 201), created.text
            wait_until(got.is_set, timeout_s=30)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    payload = received["edgefleet/v1/dev-a/assignment"]
    text = json.dumps(json.loads(payload))
    assert "signatures" in text and "dev-a" in text and "digits" in text
