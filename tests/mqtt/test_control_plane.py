"""Agent session ↔ broker ↔ controller bridge, on a real Mosquitto and on the embedded amqtt broker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import wire
from tests.services import wait_until


def test_assignment_status_and_events_flow_on_mosquitto(mosquitto: Any, make_session: Any, make_bridge: Any) -> None:
    bridge, sink = make_bridge(mosquitto.port)
    assert bridge.protocol == mqtt.MQTTv5 and bridge.shared_subscriptions
    session, verifier = make_session(mosquitto.port, "dev-a")
    wait_until(lambda: sink.last_presence("dev-a") == "online", message="online presence")

    bridge.publish_assignments([("dev-a", b"signed:v1")])
    wait_until(lambda: verifier.latest() == b"signed:v1", message="assignment delivered")

    session.publish_status("DOWNLOAD", assignment_version=1, rollout_id="r1")
    for kind in ("assignment_received", "gate_passed", "committed"):
        session.publish_event(kind, assignment_version=1, rollout_id="r1", details={"accuracy": 0.97})
    wait_until(lambda: len(sink.events) == 3, message="three events")
    assert [e.kind for e in sink.events] == ["assignment_received", "gate_passed", "committed"]
    assert sink.events[1].details == {"accuracy": 0.97}
    assert sink.statuses[-1].state == "DOWNLOAD"
    assert session.wait_drained(5)


def test_late_device_catches_up_from_the_retained_assignment(mosquitto: Any, make_session: Any,
                                                             make_bridge: Any) -> None:
    bridge, _ = make_bridge(mosquitto.port)
    bridge.publish_assignments([("dev-late", b"signed:v1"), ("dev-late", b"signed:v2")])
    _, verifier = make_session(mosquitto.port, "dev-late")
    wait_until(lambda: verifier.latest() == b"signed:v2", message="retained assignment")
    assert verifier.accepted == [b"signed:v2"]


def test_garbage_assignments_are_dropped_counted_and_reported_once(mosquitto: Any, make_session: Any,
                                                                    make_bridge: Any) -> None:
    bridge, sink = make_bridge(mosquitto.port, max_payload_bytes=64 * 1024)
    session, verifier = make_session(mosquitto.port, "dev-g")
    wait_until(lambda: session.connected.is_set(), message="connected")
    bridge.publish_assignments([("dev-g", b"forged")])
    wait_until(lambda: session.stats["rejected:bad_signature"] == 1, message="rejection counted")
    bridge.publish_assignments([("dev-g", b"signed:" + b"x" * 300_000)])
    wait_until(lambda: session.stats["dropped:oversized"] == 1, message="oversized dropped")
    # After a reconnect the same forged retained message would come back; here it is replaced, then
    # a good one still gets through: the session neither crashed nor stopped listening.
    bridge.publish_assignments([("dev-g", b"signed:good")])
    wait_until(lambda: verifier.latest() == b"signed:good", message="good assignment after garbage")
    wait_until(lambda: [e.kind for e in sink.events] == ["assignment_rejected"], message="one report")
    assert sink.events[0].reason == "bad_signature"


def test_bridge_drops_spoofed_and_malformed_device_messages(mosquitto: Any, make_bridge: Any) -> None:
    bridge, sink = make_bridge(mosquitto.port)
    raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw")
    raw.connect("127.0.0.1", mosquitto.port)
    raw.loop_start()
    try:
        good = wire.encode(wire.Event("dev-b", "ab" * 8, 0, 1.0, "committed"))
        for topic, payload in [
            ("edgefleet/v1/dev-a/events", good),                  # names another device
            ("edgefleet/v1/dev-b/events", b"{not json"),
            ("edgefleet/v1/dev-b/status", good),                  # event on the status channel
            ("edgefleet/v1/dev-b/events", b"x" * 70_000),
            ("edgefleet/v1/dev-b/events", good),
            ("edgefleet/v1/dev-b/events", good),                  # redelivery
        ]:
            raw.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_until(lambda: bridge.stats["duplicates"] == 1, message="duplicate seen")
        assert [(e.device_id, e.seq) for e in sink.events] == [("dev-b", 0)]
        assert bridge.stats["dropped:invalid"] == 4
    finally:
        raw.loop_stop()
        raw.disconnect()


def test_outbox_survives_broker_restart_and_agent_restart(mosquitto: Any, make_session: Any, make_bridge: Any,
                                                           tmp_path: Path) -> None:
    # A plain persistent subscription: Mosquitto 2.0 does not restore shared ones after its restart.
    _, sink = make_bridge(mosquitto.port, share_group=None)
    outbox_dir = tmp_path / "box"
    session, _ = make_session(mosquitto.port, "dev-r", outbox_dir=outbox_dir)
    wait_until(lambda: session.connected.is_set(), message="connected")
    session.publish_event("assignment_received")
    wait_until(lambda: sink.event_seqs("dev-r") == [0], message="first event")

    mosquitto.stop()
    wait_until(lambda: not session.connected.is_set(), message="session noticed the broker is gone")
    for kind in ("download_started", "gate_passed"):
        session.publish_event(kind)
    session.stop(timeout_s=0.1)             # the agent process "restarts" while the broker is down
    mosquitto.restart()
    restarted, _ = make_session(mosquitto.port, "dev-r", outbox_dir=outbox_dir)
    restarted.publish_event("activated")
    wait_until(lambda: sorted(sink.event_seqs("dev-r")) == [0, 1, 2, 3], timeout_s=20,
               message="every event exactly once after restarts")
    assert restarted.wait_drained(5)
    assert [e.kind for e in sorted(sink.events, key=lambda e: e.seq)] == [
        "assignment_received", "download_started", "gate_passed", "activated"]


_KILLED_AGENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from agent.mqtt import AgentSession, Outbox, SessionConfig
    class Accept:
        def receive_assignment(self, payload): pass
    session = AgentSession(SessionConfig("127.0.0.1", int(sys.argv[1]), "dev-k"), Outbox(Path(sys.argv[2])), Accept())
    session.start()
    session.connected.wait(10)
    print("up", flush=True)
    time.sleep(60)
    """
)


def test_last_will_marks_a_killed_agent_offline(mosquitto: Any, make_bridge: Any, tmp_path: Path) -> None:
    _, sink = make_bridge(mosquitto.port)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_AGENT, str(mosquitto.port), str(tmp_path / "k")],
                            stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
        wait_until(lambda: sink.last_presence("dev-k") == "online", message="online")
        proc.kill()
        wait_until(lambda: sink.last_presence("dev-k") == "offline", message="last will")
    finally:
        proc.kill()
        proc.wait()


def test_works_on_the_embedded_amqtt_broker(amqtt_broker: Any, make_session: Any, make_bridge: Any) -> None:
    bridge, sink = make_bridge(amqtt_broker.port)
    assert bridge.protocol == mqtt.MQTTv311 and not bridge.shared_subscriptions
    session, verifier = make_session(amqtt_broker.port, "dev-m")
    bridge.publish_assignments([("dev-m", b"signed:v1")])
    wait_until(lambda: verifier.latest() == b"signed:v1", message="assignment on amqtt")
    session.publish_event("committed")
    wait_until(lambda: [e.kind for e in sink.events] == ["committed"], message="event on amqtt")
    wait_until(lambda: sink.last_presence("dev-m") == "online", message="presence on amqtt")


@pytest.mark.parametrize("replicas", [2])
def test_shared_subscription_splits_messages_between_replicas(mosquitto: Any, make_session: Any,
                                                              make_bridge: Any, replicas: int) -> None:
    sinks = [make_bridge(mosquitto.port, client_id=f"ctl-{i}")[1] for i in range(replicas)]
    session, _ = make_session(mosquitto.port, "dev-s")
    wait_until(lambda: session.connected.is_set(), message="connected")
    for _ in range(40):
        session.publish_event("gate_passed")
    wait_until(lambda: sum(len(s.events) for s in sinks) == 40, message="all events once across replicas")
    assert all(len(s.events) > 0 for s in sinks)
