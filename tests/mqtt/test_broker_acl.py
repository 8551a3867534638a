"""The generated password and ACL files, enforced by a real Mosquitto.

A device authenticated as A must not publish under B's prefix, must not read B's assignment, and must
not gain B's rights by choosing B's client id; the controller reads and writes everything.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import wire
from controller.mqtt import AuthFileError
from controller.mqtt.mosquitto_auth import acl_file, hash_password, verify_password, write_auth_files
from tests.services import wait_until

PASSWORDS = {"dev-a": "secret-a", "dev-b": "secret-b"}
CONTROLLERS = {"ctl": "secret-ctl"}


class Probe:
    """A raw paho client that records what it receives and whether it was allowed in."""

    def __init__(self, port: int, username: str, password: str, client_id: str | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connack: Any = None
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or username)
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((message.topic, bytes(message.payload)))

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.received]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(mosquitto_factory: Any, tmp_path: Path) -> Any:
    password_path, acl_path = write_auth_files(tmp_path / "auth", devices=PASSWORDS, controllers=CONTROLLERS)
    return mosquitto_factory(allow_anonymous=False, acl=acl_path.read_text(),
                             extra_conf=f"password_file {password_path}")


def test_device_cannot_publish_on_or_read_another_devices_topics(broker: Any) -> None:
    ctl = Probe(broker.port, "ctl", "secret-ctl")
    a = Probe(broker.port, "dev-a", "secret-a")
    spoof = Probe(broker.port, "dev-a", "secret-a", client_id="dev-b")  # picks B's client id
    probes = [ctl, a, spoof]
    try:
        wait_until(lambda: all(p.connected.is_set() for p in probes), message="all connected")
        assert all(not p.connack.is_failure for p in probes)
        ctl.client.subscribe(f"{wire.TOPIC_ROOT}/#", qos=1)
        a.client.subscribe(f"{wire.TOPIC_ROOT}/+/assignment", qos=1)
        spoof.client.subscribe(wire.topic("dev-b", "assignment"), qos=1)
        wait_until(lambda: ctl.client.want_write() is False, message="subscriptions sent")

        ctl.client.publish(wire.topic("dev-b", "assignment"), b"for-b", qos=1, retain=True).wait_for_publish(5)
        ctl.client.publish(wire.topic("dev-a", "assignment"), b"for-a", qos=1, retain=True).wait_for_publish(5)
        for probe in (a, spoof):
            for channel in ("status", "events", "online", "assignment"):
                probe.client.publish(wire.topic("dev-b", channel), b"forged", qos=1).wait_for_publish(5)
        # A's own publish after the forged ones: once the controller sees it, the forged ones were handled.
        a.client.publish(wire.topic("dev-a", "events"), b"marker", qos=1).wait_for_publish(5)

        wait_until(lambda: wire.topic("dev-a", "events") in ctl.topics(), message="A's own event")
        wait_until(lambda: wire.topic("dev-a", "assignment") in a.topics(), message="A's own assignment")
        forged_seen = [t for t, p in ctl.received if p == b"forged"]
        assert forged_seen == [], f"broker let A publish under B: {forged_seen}"
        assert wire.topic("dev-b", "assignment") not in a.topics()
        assert spoof.topics() == []
        assert (wire.topic("dev-b", "assignment"), b"for-b") in ctl.received
    finally:
        for probe in probes:
            probe.close()


def test_wrong_password_and_unknown_user_are_refused(broker: Any) -> None:
    wrong = Probe(broker.port, "dev-a", "secret-b")
    unknown = Probe(broker.port, "dev-z", "secret-a")
    try:
        wait_until(lambda: wrong.connected.is_set() and unknown.connected.is_set(), message="CONNACKs")
        assert wrong.connack.is_failure and unknown.connack.is_failure
    finally:
        wrong.close()
        unknown.close()


def test_hash_format_matches_mosquitto_passwd() -> None:
    encoded = hash_password("pw", salt=b"0123456789ab")
    assert encoded.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert verify_password("pw", encoded) and not verify_password("other", encoded)


@pytest.mark.parametrize("username", ["a/b", "+", "#", "dev b", "", "x" * 65, "$SYS"])
def test_usernames_that_would_widen_a_pattern_are_refused(username: str, tmp_path: Path) -> None:
    with pytest.raises(AuthFileError):
        write_auth_files(tmp_path, devices={username: "pw"}, controllers={})
    with pytest.raises(AuthFileError):
        acl_file([username])


def test_acl_never_keys_on_the_client_id() -> None:
    text = acl_file(["ctl"])
    assert "%c" not in text
    assert "pattern read edgefleet/v1/%u/assignment" in text
    assert "pattern write edgefleet/v1/%u/assignment" not in text


def test_controller_bridge_with_shared_subscriptions_works_under_the_acl(broker: Any, tmp_path: Path) -> None:
    from agent.mqtt import AgentSession, Outbox, SessionConfig
    from controller.mqtt import BridgeConfig, MqttBridge

    from .conftest import PrefixVerifier, RecordingSink

    sink = RecordingSink()
    bridge = MqttBridge(BridgeConfig("127.0.0.1", broker.port, username="ctl", password="secret-ctl"), sink)
    bridge.start()
    verifier = PrefixVerifier()
    session = AgentSession(SessionConfig("127.0.0.1", broker.port, "dev-a", "secret-a"), Outbox(tmp_path / "o"),
                           verifier)
    session.start()
    try:
        assert bridge.shared_subscriptions
        wait_until(lambda: session.connected.is_set(), message="device connected")
        session.publish_event("committed")
        bridge.publish_assignments([("dev-a", b"signed:1")])
        wait_until(lambda: [e.kind for e in sink.events] == ["committed"], message="event through $share")
        wait_until(lambda: verifier.latest() == b"signed:1", message="assignment to the device")
    finally:
        session.stop(timeout_s=0.5)
        bridge.stop()
