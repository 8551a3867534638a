"""Device registry: filters by tag, class, running model/version, presence; stable pagination; labels;
history; reports applied from real MQTT messages through the bridge; revoked devices stay revoked."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent import wire
from controller.devices import DatabaseFleetSink
from controller.settings import Settings
from tests.controller.conftest import ControllerEnv, start_env
from tests.services import Mosquitto


def _enroll(env: ControllerEnv, device_id: str, *, hardware_class: str, tags: list[str]) -> dict[str, Any]:
    token = env.client.post("/api/v1/enrollment-tokens", json={"tags": tags},
                            headers=env.auth("admin")).json()["token"]
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    r = env.client.post("/api/v1/enroll", json={"token": token, "public_key": pem, "hardware_class": hardware_class,
                                                "device_id": device_id})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _ids(env: ControllerEnv, **query: Any) -> list[str]:
    r = env.client.get("/api/v1/devices", params=query, headers=env.auth("viewer"))
    assert r.status_code == 200, r.text
    return [d["id"] for d in r.json()["items"]]


def _status(device_id: str, seq: int, model: str | None, version: str, state: str = "idle") -> wire.Status:
    active = wire.ActiveModel(model, version, "onnxruntime-fp32", "ab" * 32) if model else None
    return wire.Status(device_id=device_id, stream="0a1b2c3d", seq=seq, sent_at=time.time(), state=state, active=active)


def test_queries_pagination_labels_and_history(env: ControllerEnv) -> None:
    _enroll(env, "cam-01", hardware_class="jetson-orin-nano", tags=["site:lyon", "canary"])
    _enroll(env, "cam-02", hardware_class="jetson-orin-nano", tags=["site:lyon"])
    _enroll(env, "box-01", hardware_class="x86_64-avx2", tags=["site:oslo"])
    sink = DatabaseFleetSink(env.ctx.session_factory)
    sink.on_status(_status("cam-01", 1, "digits-mlp", "1.0.0"))
    sink.on_status(_status("box-01", 1, "digits-mlp", "2.0.0"))
    sink.on_presence(wire.Presence("cam-02", "online"))
    sink.on_presence(wire.Presence("box-01", "offline"))  # its last will, after a status that marked it online

    assert _ids(env) == ["box-01", "cam-01", "cam-02"]
    assert _ids(env, tag="site:lyon") == ["cam-01", "cam-02"]
    assert _ids(env, tag=["site:lyon", "canary"]) == ["cam-01"]
    assert _ids(env, hardware_class="x86_64-avx2") == ["box-01"]
    assert _ids(env, model="digits-mlp") == ["box-01", "cam-01"]
    assert _ids(env, model="digits-mlp", version="1.0.0") == ["cam-01"]
    assert _ids(env, online="true") == ["cam-01", "cam-02"]  # any message marks a device online
    assert _ids(env, online="false") == ["box-01"]

    pages, offset = [], 0
    while offset is not None:
        page = env.client.get("/api/v1/devices", params={"limit": 2, "offset": offset},
                              headers=env.auth("viewer")).json()
        assert page["total"] == 3 and page["limit"] == 2
        pages.append([d["id"] for d in page["items"]])
        offset = page["next_offset"]
    assert pages == [["box-01", "cam-01"], ["cam-02"]]
    bad = env.client.get("/api/v1/devices", params={"limit": 0}, headers=env.auth("viewer"))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"

    r = env.client.patch("/api/v1/devices/cam-02", json={"add_tags": ["canary"], "remove_tags": ["site:lyon"]},
                         headers=env.auth("operator"))
    assert r.status_code == 200 and r.json()["tags"] == ["canary"]
    assert _ids(env, tag="canary") == ["cam-01", "cam-02"]
    bad_tag = env.client.patch("/api/v1/devices/cam-02", json={"add_tags": ["has space"]}, headers=env.auth("operator"))
    assert bad_tag.status_code == 422
    assert env.client.get("/api/v1/devices/nope", headers=env.auth("viewer")).status_code == 404

    sink.on_status(_status("cam-01", 2, "digits-mlp", "1.1.0", state="probation"))
    detail = env.client.get("/api/v1/devices/cam-01", headers=env.auth("viewer")).json()
    assert (detail["current_version"], detail["update_state"]) == ("1.1.0", "probation")
    kinds = [e["kind"] for e in env.client.get("/api/v1/devices/cam-01/history",
                                               headers=env.auth("viewer")).json()["items"]]
    assert kinds == ["status", "status", "online", "enrolled"]


def test_reports_for_unknown_or_revoked_devices_change_nothing(env: ControllerEnv) -> None:
    _enroll(env, "cam-09", hardware_class="x86_64-avx2", tags=[])
    env.client.post("/api/v1/devices/cam-09/revoke", json={"reason": "decommissioned"}, headers=env.auth("admin"))
    sink = DatabaseFleetSink(env.ctx.session_factory)
    sink.on_presence(wire.Presence("cam-09", "online"))
    sink.on_status(_status("cam-09", 5, "digits-mlp", "9.9.9"))
    sink.on_presence(wire.Presence("ghost-01", "online"))
    detail = env.client.get("/api/v1/devices/cam-09", headers=env.auth("viewer")).json()
    assert detail["status"] == "revoked" and detail["online"] is False and detail["current_model"] is None
    assert _ids(env) == ["cam-09"]


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_bridge_applies_real_mqtt_reports(controller_settings: Settings, mosquitto: Mosquitto) -> None:
    settings = controller_settings.model_copy(update={"mqtt_bridge": True, "mqtt_port": mosquitto.port})
    with start_env(settings) as env:
        _enroll(env, "cam-77", hardware_class="x86_64-avx2", tags=["lab"])
        bridge = env.ctx.extras["bridge"]
        _wait(bridge.connected.is_set, 20, "the bridge to connect")
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-77")
        device.connect("127.0.0.1", mosquitto.port)
        device.loop_start()
        try:
            # Garbage first: the bridge drops it and keeps applying what follows.
            device.publish(wire.topic("cam-77", "status"), b"{not json", qos=1).wait_for_publish(10)
            device.publish(wire.topic("cam-77", "online"), wire.encode(wire.Presence("cam-77", "online")), qos=1,
                           retain=True).wait_for_publish(10)
            device.publish(wire.topic("cam-77", "status"),
                           wire.encode(_status("cam-77", 1, "digits-mlp", "1.0.0", state="idle")),
                           qos=1, retain=True).wait_for_publish(10)

            def seen() -> bool:
                d = env.client.get("/api/v1/devices/cam-77", headers=env.auth("viewer")).json()
                return bool(d["online"] and d["current_version"] == "1.0.0")

            _wait(seen, 20, "the registry to show the device online running 1.0.0")
        finally:
            device.disconnect()
            device.loop_stop()
