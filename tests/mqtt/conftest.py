"""Helpers for the MQTT tests: a recording `FleetSink`, a fake `AssignmentPort`, session builders."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import wire
from agent.mqtt import AgentSession, Outbox, PayloadRejected, SessionConfig
from controller.mqtt import BridgeConfig, MqttBridge


class RecordingSink:
    """FleetSink that keeps everything, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: list[wire.Status] = []
        self.events: list[wire.Event] = []
        self.presence: list[wire.Presence] = []

    def on_status(self, status: wire.Status) -> None:
        with self.lock:
            self.statuses.append(status)

    def on_event(self, event: wire.Event) -> None:
        with self.lock:
            self.events.append(event)

    def on_presence(self, presence: wire.Presence) -> None:
        with self.lock:
            self.presence.append(presence)

    def event_seqs(self, device_id: str) -> list[int]:
        with self.lock:
            return [e.seq for e in self.events if e.device_id == device_id]

    def last_presence(self, device_id: str) -> str | None:
        with self.lock:
            states = [p.state for p in self.presence if p.device_id == device_id]
        return states[-1] if states else None


class PrefixVerifier:
    """Stands in for the director check: accepts payloads that start with b'signed:'."""

    def __init__(self) -> None:
        self.accepted: list[bytes] = []
        self.lock = threading.Lock()

    def receive_assignment(self, payload: bytes) -> None:
        if not payload.startswith(b"signed:"):
            raise PayloadRejected("bad_signature", "payload is not signed")
        with self.lock:
            self.accepted.append(payload)

    def latest(self) -> bytes | None:
        with self.lock:
            return self.accepted[-1] if self.accepted else None


@pytest.fixture
def make_session(tmp_path: Path) -> Iterator[Callable[..., tuple[AgentSession, PrefixVerifier]]]:
    sessions: list[AgentSession] = []

    def make(port: int, device_id: str, password: str | None = None, *, start: bool = True,
             outbox_dir: Path | None = None) -> tuple[AgentSession, PrefixVerifier]:
        verifier = PrefixVerifier()
        outbox = Outbox(outbox_dir or tmp_path / f"outbox-{device_id}")
        session = AgentSession(
            SessionConfig("127.0.0.1", port, device_id, password, reconnect_min_s=1, reconnect_max_s=2,
                          agent_version="test"),
            outbox, verifier,
        )
        sessions.append(session)
        if start:
            session.start()
        return session, verifier

    yield make
    for session in sessions:
        session.stop(timeout_s=0.5)


@pytest.fixture
def make_bridge() -> Iterator[Callable[..., tuple[MqttBridge, RecordingSink]]]:
    bridges: list[MqttBridge] = []

    def make(port: int, **options: object) -> tuple[MqttBridge, RecordingSink]:
        sink = RecordingSink()
        bridge = MqttBridge(BridgeConfig("127.0.0.1", port, reconnect_min_s=1, reconnect_max_s=2,
                                         **options), sink)  # type: ignore[arg-type]
        bridge.start()
        bridges.append(bridge)
        return bridge, sink

    yield make
    for bridge in bridges:
        bridge.stop()
