"""The agent's MQTT session: one device's connection to the control plane.

What it does, and why:

- Connects with the device's own credentials; the username *is* the device id, because the broker's
  ACL grants topics by username (`%u`), never by the client id a device could choose.
- Sets a retained last will `offline` on `edgefleet/v1/<device>/online` and publishes `online` after
  every connect, so the controller sees presence even when the device dies without saying goodbye.
- Subscribes inside `on_connect`, so every reconnect renews the subscription; the retained assignment
  arrives again after each connect and a device that was offline catches up by itself.
- Incoming payloads are checked (topic, size, non-empty) and handed to an `AssignmentPort`, which
  verifies the signature and queues the assignment for the update engine. Anything it refuses is
  dropped and counted, reported once as an `assignment_rejected` event, and never retried: the device
  keeps serving its current model.
- Status and events go through the persisted `Outbox` first and leave it only when the broker has
  acknowledged them (QoS 1). Within one process paho resends unacknowledged messages after a
  reconnect; after a restart the session republishes whatever the outbox still holds.

Callbacks run on paho's network thread; they only parse, count and hand over. The session does not
verify signatures nor decide anything about updates.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import wire
from agent.mqtt.errors import ConfigError, MqttError, OutboxError, PayloadRejected
from agent.mqtt.outbox import Outbox, OutboxEntry


class AssignmentPort(Protocol):
    """Receives the raw bytes of a retained assignment; raises on anything it does not trust.

    An exception with a `reason` attribute (such as `PayloadRejected` or the manifests' `TrustError`)
    is counted under that reason. Must return quickly: it runs on paho's thread. The session skips a
    payload identical to the last accepted one (the retained copy after a reconnect); after an agent
    restart that copy reaches the port once more, which should treat an already-applied version as
    a no-op rather than a rejection.
    """

    def receive_assignment(self, payload: bytes) -> None: ...


@dataclass(frozen=True)
class SessionConfig:
    host: str
    port: int
    device_id: str
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_assignment_bytes: int = 256 * 1024
    agent_version: str | None = None

    def __post_init__(self) -> None:
        if not wire.is_device_id(self.device_id):
            raise ConfigError(f"device id {self.device_id!r} must match {wire.DEVICE_ID_RE.pattern}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1-65535, got {self.port}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("reconnect delays must satisfy 0 < reconnect_min_s <= reconnect_max_s")
        if self.max_assignment_bytes <= 0:
            raise ConfigError("max_assignment_bytes must be positive")


class AgentSession:
    def __init__(
        self,
        config: SessionConfig,
        outbox: Outbox,
        assignments: AssignmentPort,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.assignments = assignments
        self.clock = clock
        self.connected = threading.Event()
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._mid_to_seq: dict[int, int] = {}
        self._handed_to_paho: set[int] = set()
        self._early_acks: set[int] = set()
        self._last_rejected_sha256: str | None = None
        self._last_accepted_sha256: str | None = None
        self._assignment_topic = wire.topic(config.device_id, "assignment")
        self._tls = self._tls_context()
        self._client = self._build_client()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho retries with backoff until `stop()`."""
        self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say `offline` (a clean disconnect does not fire the will), then disconnect."""
        if self.connected.is_set():
            info = self._client.publish(
                wire.topic(self.config.device_id, "online"), self._presence("offline"), qos=1, retain=True
            )
            deadline = time.monotonic() + timeout_s
            while not info.is_published() and time.monotonic() < deadline and self.connected.is_set():
                time.sleep(0.01)
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    # -- outgoing ---------------------------------------------------------------------------------

    def publish_status(
        self,
        state: str,
        *,
        active: wire.ActiveModel | None = None,
        assignment_version: int | None = None,
        rollout_id: str | None = None,
        last_error: str | None = None,
    ) -> int:
        """Persist the latest status (replacing any unsent older one), then send it; returns its seq."""

        def build(seq: int, stream: str) -> bytes:
            return wire.encode(
                wire.Status(self.config.device_id, stream, seq, self.clock(), state, active,
                            assignment_version, rollout_id, last_error)
            )

        entry = self.outbox.enqueue("status", build, retain=True, coalesce_key="status")
        self._send(entry)
        return entry.seq

    def publish_event(
        self,
        kind: str,
        *,
        assignment_version: int | None = None,
        rollout_id: str | None = None,
        model: str | None = None,
        version: str | None = None,
        reason: str | None = None,
        details: Mapping[str, wire.DetailValue] | None = None,
    ) -> int:
        """Persist one lifecycle event, then send it; returns its seq."""

        def build(seq: int, stream: str) -> bytes:
            return wire.encode(
                wire.Event(self.config.device_id, stream, seq, self.clock(), kind, assignment_version,
                           rollout_id, model, version, reason, dict(details or {}))
            )

        entry = self.outbox.enqueue("events", build)
        self._send(entry)
        return entry.seq

    def publish_telemetry(self, build_payload: Callable[[int, str], bytes]) -> int:
        """Persist one telemetry batch (`build_payload(seq, stream)` encodes it), then send it; returns its seq."""
        entry = self.outbox.enqueue("telemetry", build_payload)
        self._send(entry)
        return entry.seq

    def wait_drained(self, timeout_s: float) -> bool:
        """True once the broker acknowledged everything in the outbox."""
        deadline = time.monotonic() + timeout_s
        while len(self.outbox) > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _send(self, entry: OutboxEntry) -> None:
        if not self.connected.is_set():
            return  # flushed from on_connect
        with self._lock:
            if entry.seq in self._handed_to_paho:
                return
            self._handed_to_paho.add(entry.seq)
        info = self._client.publish(
            wire.topic(self.config.device_id, entry.channel), entry.payload, qos=1, retain=entry.retain
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            with self._lock:
                self._handed_to_paho.discard(entry.seq)
            self.stats["publish_errors"] += 1
            return
        # on_publish may already have fired on paho's thread before we learned the mid.
        with self._lock:
            early = info.mid in self._early_acks
            if early:
                self._early_acks.discard(info.mid)
            else:
                self._mid_to_seq[info.mid] = entry.seq
        if early:
            self._acked(entry.seq)

    def _acked(self, seq: int) -> None:
        with self._lock:
            self._handed_to_paho.discard(seq)
        try:
            self.outbox.ack(seq)
            self.stats["acked"] += 1
        except OutboxError:
            self.stats["outbox_errors"] += 1

    # -- paho callbacks (network thread) ----------------------------------------------------------

    def _build_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.config.device_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.username_pw_set(self.config.device_id, self.config.password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.will_set(
            wire.topic(self.config.device_id, "online"), self._presence("offline"), qos=1, retain=True
        )
        client.reconnect_delay_set(
            min_delay=max(1, int(self.config.reconnect_min_s)), max_delay=max(1, int(self.config.reconnect_max_s))
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _tls_context(self) -> ssl.SSLContext | None:
        """One context for the session's life: paho wraps every (re)connection with it, so loading a
        renewed certificate into it (`reload_certificate`) takes effect on the next connection."""
        if not (self.config.ca_file or self.config.cert_file):
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.config.ca_file)
        if self.config.cert_file:
            context.load_cert_chain(self.config.cert_file, self.config.key_file)
        return context

    def reload_certificate(self) -> bool:
        """Read the client certificate and key again (after a renewal); False when the session has none."""
        if self._tls is None or not self.config.cert_file:
            return False
        self._tls.load_cert_chain(self.config.cert_file, self.config.key_file)
        return True

    def _presence(self, state: str) -> bytes:
        return wire.encode(wire.Presence(self.config.device_id, state, self.config.agent_version))

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            self.stats[f"connect_refused:{reason}"] += 1
            return
        self.stats["connects"] += 1
        client.subscribe(self._assignment_topic, qos=1)
        client.publish(wire.topic(self.config.device_id, "online"), self._presence("online"), qos=1, retain=True)
        self.connected.set()
        for entry in self.outbox.pending():
            self._send(entry)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        self.connected.clear()
        self.stats["disconnects"] += 1

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties | None
    ) -> None:
        with self._lock:
            seq = self._mid_to_seq.pop(mid, None)
            if seq is None:
                self._early_acks.add(mid)
                return
        self._acked(seq)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        try:
            self._check_transport(message.topic, payload)
        except PayloadRejected as e:
            self.stats[f"dropped:{e.reason}"] += 1
            return
        digest = hashlib.sha256(payload).hexdigest()
        if digest == self._last_accepted_sha256:
            self.stats["duplicates"] += 1  # the retained copy again, after a reconnect
            return
        try:
            self.assignments.receive_assignment(payload)
        except Exception as e:  # noqa: BLE001 - a bad payload must never take the session down
            reason = getattr(e, "reason", None)
            if isinstance(reason, Enum):
                reason = reason.value
            code = reason if isinstance(reason, str) else type(e).__name__
            self.stats[f"rejected:{code}"] += 1
            self._report_rejection(payload, code, str(e))
            return
        self._last_accepted_sha256 = digest
        self.stats["assignments_accepted"] += 1

    def _check_transport(self, topic: str, payload: bytes) -> None:
        if topic != self._assignment_topic:
            raise PayloadRejected("unexpected_topic", f"message on {topic!r}")
        if not payload:
            raise PayloadRejected("empty", "retained assignment was cleared")
        if len(payload) > self.config.max_assignment_bytes:
            raise PayloadRejected(
                "oversized", f"{len(payload)} bytes, limit {self.config.max_assignment_bytes}"
            )

    def _report_rejection(self, payload: bytes, code: str, message: str) -> None:
        # The same retained payload comes back after every reconnect: report it once, not in a loop.
        digest = hashlib.sha256(payload).hexdigest()
        if digest == self._last_rejected_sha256:
            return
        self._last_rejected_sha256 = digest
        try:
            self.publish_event(
                "assignment_rejected", reason=code[:128], details={"error": message[:1024], "sha256": digest}
            )
        except (MqttError, wire.WireError):
            self.stats["report_errors"] += 1
