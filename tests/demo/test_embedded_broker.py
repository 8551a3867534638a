"""The embedded amqtt broker: device logins and the per-device topic rules, with real paho clients."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from controller.broker import EmbeddedBroker, StaticAuthority, device_topic_allowed
from tests.service_process import free_port
from tests.services import wait_until


class Client:
    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connect_rc: int | None = None
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{username}-{free_port()}")
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        self.connect_rc = int(getattr(rc, "value", rc))  # type: ignore[arg-type]

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.messages]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    authority = StaticAuthority({"ctl": "ctl-pw", "dev-a": "pw-a", "dev-b": "pw-b"}, controllers={"ctl"})
    b = EmbeddedBroker(port=free_port(), authority=authority)
    b.start()
    yield b
    b.stop()


def test_rules_match_the_generated_acl() -> None:
    assert device_topic_allowed("a", "edgefleet/v1/a/status", "publish")
    assert device_topic_allowed("a", "edgefleet/v1/a/assignment", "subscribe")
    assert not device_topic_allowed("a", "edgefleet/v1/a/assignment", "publish")
    assert not device_topic_allowed("a", "edgefleet/v1/b/status", "publish")
    assert not device_topic_allowed("a", "edgefleet/v1/+/assignment", "subscribe")
    assert not device_topic_allowed("a", "edgefleet/v1/b/assignment", "receive")


def test_wrong_password_is_refused(broker: EmbeddedBroker) -> None:
    bad = Client(broker.port, "dev-a", "wrong")
    try:
        wait_until(lambda: bad.connect_rc is not None, message="CONNACK")
        assert bad.connect_rc != 0
    finally:
        bad.close()


def test_device_publishes_only_under_its_own_prefix(broker: EmbeddedBroker) -> None:
    ctl = Client(broker.port, "ctl", "ctl-pw")
    a = Client(broker.port, "dev-a", "pw-a")
    try:
        wait_until(lambda: ctl.connect_rc == 0 and a.connect_rc == 0, message="both connected")
        ctl.c.subscribe("edgefleet/v1/#", qos=1)
        wait_until(lambda: "edgefleet/v1/dev-a/status" in ctl.topics() or _publish(a, ctl), timeout_s=5,
                   message="controller sees dev-a's own status")
        a.c.publish("edgefleet/v1/dev-b/status", b"spoofed", qos=1).wait_for_publish(5)
        a.c.publish("edgefleet/v1/dev-a/events", b"marker", qos=1).wait_for_publish(5)
        wait_until(lambda: "edgefleet/v1/dev-a/events" in ctl.topics(), message="marker after the spoof")
        assert "edgefleet/v1/dev-b/status" not in ctl.topics()
    finally:
        a.close()
        ctl.close()


def _publish(a: Client, ctl: Client) -> bool:
    a.c.publish("edgefleet/v1/dev-a/status", b"ok", qos=1)
    return False


def test_device_reads_only_its_own_assignment(broker: EmbeddedBroker) -> None:
    ctl = Client(broker.port, "ctl", "ctl-pw")
    wait_until(lambda: ctl.connect_rc == 0, message="controller connected")
    ctl.c.publish("edgefleet/v1/dev-a/assignment", b"for-a", qos=1, retain=True).wait_for_publish(5)
    ctl.c.publish("edgefleet/v1/dev-b/assignment", b"for-b", qos=1, retain=True).wait_for_publish(5)
    a = Client(broker.port, "dev-a", "pw-a")
    try:
        wait_until(lambda: a.connect_rc == 0, message="dev-a connected")
        a.c.subscribe("edgefleet/v1/dev-b/assignment", qos=1)
        a.c.subscribe("edgefleet/v1/+/assignment", qos=1)
        a.c.subscribe("edgefleet/v1/dev-a/assignment", qos=1)
        wait_until(lambda: ("edgefleet/v1/dev-a/assignment", b"for-a") in a.messages, message="own assignment")
        ctl.c.publish("edgefleet/v1/dev-b/assignment", b"for-b-2", qos=1, retain=True).wait_for_publish(5)
        ctl.c.publish("edgefleet/v1/dev-a/assignment", b"for-a-2", qos=1, retain=True).wait_for_publish(5)
        wait_until(lambda: ("edgefleet/v1/dev-a/assignment", b"for-a-2") in a.messages, message="update for a")
        assert all(t == "edgefleet/v1/dev-a/assignment" for t in a.topics()), a.messages
    finally:
        a.close()
        ctl.close()


def test_anonymous_broker_for_a_lab_and_a_taken_port_is_a_clear_error() -> None:
    with EmbeddedBroker(port=free_port()) as b:
        c = Client(b.port, None, None)
        try:
            wait_until(lambda: c.connect_rc == 0, message="anonymous connect")
        finally:
            c.close()
        from controller.broker import BrokerStartError

        with pytest.raises(BrokerStartError, match="did not start"):
            EmbeddedBroker(port=b.port).start()


def test_controller_serve_runs_its_own_broker(tmp_path: pytest.TempPathFactory) -> None:
    import os
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    api_port, mqtt_port = free_port(), free_port()
    env = {**os.environ, "EDGEFLEET_STATE_DIR": str(Path(str(tmp_path)) / "state"), "EDGEFLEET_PORT": str(api_port),
           "EDGEFLEET_MQTT_PORT": str(mqtt_port), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", "from controller.cli import main; main()", "controller", "serve",
                             "--embedded-broker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                return False

        wait_until(healthy, timeout_s=60, message="controller serve answers /healthz")
        anonymous = Client(mqtt_port, None, None)
        stranger = Client(mqtt_port, "dev-x", "guess")
        try:
            wait_until(lambda: anonymous.connect_rc is not None and stranger.connect_rc is not None,
                       message="CONNACKs from the embedded broker")
            assert anonymous.connect_rc != 0 and stranger.connect_rc != 0  # only enrolled devices get in
        finally:
            anonymous.close()
            stranger.close()
    finally:
        proc.terminate()
        proc.wait(20)
