"""The controller's MQTT bridge: publishes signed assignments, consumes what devices report.

- Assignments go out retained with QoS 1 on `edgefleet/v1/<device>/assignment`, so a device that is
  offline today receives the latest one when it connects. The bridge publishes bytes it is given
  (already signed by the director); it never builds or alters an assignment.
- `status`, `events` and `online` are consumed through MQTT 5 shared subscriptions
  (`$share/<group>/…`) when the broker offers them, so several controller replicas split the load.
  The protocol is negotiated once at start: MQTT 5 first, MQTT 3.1.1 when the broker refuses it
  (amqtt, the embedded broker, speaks only 3.1.1); without shared subscriptions every replica sees every
  message, which is safe because processing is idempotent. Mosquitto 2.0 does not restore shared
  subscriptions from its persistence file after a broker restart, so device messages sent between the
  broker's restart and the replica's resubscribe are not queued for it; the retained `status` then
  carries each device's latest state. A single replica can set `share_group=None` to keep a plain
  persistent subscription that survives broker restarts.
- Every payload is bounded, decoded with `agent.wire` (the agent's own definition), checked against the
  topic it came on (a device's identity is its topic, which the broker ACL ties to its username), and
  deduplicated by (device, stream, seq) before it reaches the `FleetSink`. Bad payloads are dropped and
  counted in `stats`; nothing a device sends can stop the bridge.
- The bridge keeps a persistent broker session under a stable client id (one per replica), so events
  sent while it reconnects are queued by the broker rather than lost; paho reconnects with exponential
  backoff by itself and subscriptions are renewed in `on_connect`.

The sink is called on paho's network thread: it should record and return (the rollout engine reads
what it recorded on its own schedule).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import wire
from controller.mqtt.dedupe import SequenceDeduper
from controller.mqtt.errors import BridgeError, BrokerUnavailable

CONSUMED_CHANNELS = ("status", "events", "online")
_UNSUPPORTED_PROTOCOL = 132  # MQTT 5 reason "Unsupported Protocol Version" (v3 return code 1 maps here)


class FleetSink(Protocol):
    """Where decoded, deduplicated device messages go."""

    def on_status(self, status: wire.Status) -> None: ...

    def on_event(self, event: wire.Event) -> None: ...

    def on_presence(self, presence: wire.Presence) -> None: ...


@dataclass(frozen=True)
class BridgeConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    client_id: str = "edgefleet-controller"
    session_expiry_s: int = 24 * 3600
    share_group: str | None = "controllers"  # None: plain subscriptions (one replica)
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive_s: int = 30
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    connect_timeout_s: float = 10.0
    max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES


class MqttBridge:
    def __init__(self, config: BridgeConfig, sink: FleetSink, deduper: SequenceDeduper | None = None) -> None:
        self.config = config
        self.sink = sink
        self.deduper = deduper or SequenceDeduper()
        self.stats: Counter[str] = Counter()
        self.connected = threading.Event()
        self.protocol: int | None = None
        self.shared_subscriptions = False
        self._client: mqtt.Client | None = None
        self._connack = threading.Event()
        self._connack_code = 0
        self.last_drop = ""

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Negotiate the protocol, connect, subscribe; raises BrokerUnavailable if nothing answers."""
        protocol = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}.get(self.config.protocol) or self._probe()
        client = self._build_client(protocol)
        answered = self._connect(client, protocol, self._session_args(protocol))
        if answered and self.connected.is_set():
            self._client = client
            self.protocol = protocol
            return
        client.loop_stop()
        client.disconnect()
        if not answered:
            raise BrokerUnavailable(f"broker {self.config.host}:{self.config.port} did not answer CONNECT")
        raise BridgeError(f"broker {self.config.host}:{self.config.port} refused the bridge: "
                          f"reason {self._connack_code}")

    def _probe(self) -> int:
        """MQTT 5 if the broker accepts a plain MQTT 5 CONNECT, else 3.1.1.

        The probe uses its own client id and no session, so it can never discard the bridge's
        persistent session; 3.1.1-only brokers (amqtt) refuse a plain MQTT 5 CONNECT at once.
        """
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.config.client_id}-probe"[:64],
                             protocol=mqtt.MQTTv5)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        client.on_connect = self._on_probe_connect
        client.on_disconnect = self._on_probe_disconnect
        answered = self._connect(client, mqtt.MQTTv5, {})
        client.disconnect()
        client.loop_stop()
        if not answered:
            raise BrokerUnavailable(f"broker {self.config.host}:{self.config.port} did not answer CONNECT")
        return mqtt.MQTTv5 if self._connack_code == 0 else mqtt.MQTTv311

    def _connect(self, client: mqtt.Client, protocol: int, args: dict[str, Any]) -> bool:
        self._connack.clear()
        self._connack_code = 0
        try:
            client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s, **args)
        except OSError as e:
            raise BrokerUnavailable(f"cannot reach broker {self.config.host}:{self.config.port}: {e}") from e
        client.loop_start()
        return self._connack.wait(self.config.connect_timeout_s)

    def _on_probe_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                          props: Properties | None) -> None:
        self._connack_code = reason.value
        self._connack.set()

    def _on_probe_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                             props: Properties | None) -> None:
        if not self._connack.is_set():
            self._connack_code = _UNSUPPORTED_PROTOCOL  # closed before CONNACK: not an MQTT 5 broker
            self._connack.set()

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self.connected.clear()

    # -- assignments out --------------------------------------------------------------------------

    def publish_assignment(self, device_id: str, signed_payload: bytes) -> mqtt.MQTTMessageInfo:
        """Queue one retained assignment; the returned info's `wait_for_publish()` waits for PUBACK."""
        if not signed_payload:
            raise BridgeError(f"empty assignment for {device_id}: use clear_assignment to withdraw one")
        return self._publish(wire.topic(device_id, "assignment"), signed_payload)

    def clear_assignment(self, device_id: str) -> mqtt.MQTTMessageInfo:
        """Remove the retained assignment (a device deleted from the fleet)."""
        return self._publish(wire.topic(device_id, "assignment"), b"")

    def publish_assignments(self, items: Iterable[tuple[str, bytes]], timeout_s: float = 60.0) -> int:
        """Publish many and wait until the broker acknowledged all of them; returns the count."""
        infos = [self.publish_assignment(device_id, payload) for device_id, payload in items]
        deadline = time.monotonic() + timeout_s
        for info in infos:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _wait_published(info, remaining):
                raise BrokerUnavailable(
                    f"broker did not acknowledge {len(infos)} assignments in {timeout_s} s"
                )
        return len(infos)

    def _publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        if self._client is None:
            raise BridgeError("bridge is not started")
        # While disconnected paho keeps QoS 1 messages and sends them after the reconnect.
        info = self._client.publish(topic, payload, qos=1, retain=True)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BridgeError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info

    # -- paho callbacks (network thread) ----------------------------------------------------------

    def _build_client(self, protocol: int) -> mqtt.Client:
        kwargs: dict[str, Any] = {"client_id": self.config.client_id, "protocol": protocol}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        client.reconnect_delay_set(self.config.reconnect_min_s, self.config.reconnect_max_s)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _session_args(self, protocol: int) -> dict[str, Any]:
        # A persistent session: while a replica reconnects the broker queues device events for it
        # instead of dropping them (a non-persistent subscriber misses everything sent meanwhile).
        if protocol != mqtt.MQTTv5:
            return {}
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry_s
        return {"clean_start": False, "properties": props}

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        self._connack_code = reason.value
        if reason.is_failure:
            self.stats[f"connect_refused:{reason.value}"] += 1
            self._connack.set()
            return
        self.stats["connects"] += 1
        self.shared_subscriptions = (
            self.config.share_group is not None and client.protocol == mqtt.MQTTv5 and _shared_available(props)
        )
        prefix = f"$share/{self.config.share_group}/" if self.shared_subscriptions else ""
        client.subscribe([(f"{prefix}{wire.TOPIC_ROOT}/+/{c}", 1) for c in CONSUMED_CHANNELS])
        self.connected.set()
        self._connack.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        self.connected.clear()
        self.stats["disconnects"] += 1
        if not self._connack.is_set():
            self._connack_code = reason.value if reason.is_failure else _UNSUPPORTED_PROTOCOL
            self._connack.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._dispatch(message.topic, bytes(message.payload))
        except wire.WireError as e:
            self.stats["dropped:invalid"] += 1
            self.last_drop = f"{message.topic}: {e}"
        except Exception as e:  # noqa: BLE001 - a sink failure must not kill paho's thread
            self.stats["sink_errors"] += 1
            self.last_drop = f"{message.topic}: sink raised {type(e).__name__}: {e}"

    def _dispatch(self, topic: str, payload: bytes) -> None:
        device_id, channel = wire.parse_topic(topic)
        if not payload:
            self.stats["dropped:empty"] += 1  # a cleared retained message
            return
        message = wire.decode(payload, max_bytes=self.config.max_payload_bytes)
        if message.device_id != device_id:
            raise wire.WireError(f"payload names device {message.device_id!r} but came on {topic!r}")
        if isinstance(message, wire.Status) and channel == "status":
            if self.deduper.first_time(device_id, message.stream, message.seq):
                self.sink.on_status(message)
            else:
                self.stats["duplicates"] += 1
        elif isinstance(message, wire.Event) and channel == "events":
            if self.deduper.first_time(device_id, message.stream, message.seq):
                self.sink.on_event(message)
            else:
                self.stats["duplicates"] += 1
        elif isinstance(message, wire.Presence) and channel == "online":
            self.sink.on_presence(message)
        else:
            raise wire.WireError(f"{type(message).__name__} payload on channel {channel!r}")
        self.stats["received"] += 1


def _shared_available(props: Properties | None) -> bool:
    # Absent property means "available" (MQTT 5, 3.2.2.3.15).
    value = getattr(props, "SharedSubscriptionAvailable", 1) if props is not None else 1
    return bool(value)


def _wait_published(info: mqtt.MQTTMessageInfo, timeout_s: float) -> bool:
    # Not `wait_for_publish`: it raises for messages queued while disconnected, which paho still sends.
    deadline = time.monotonic() + timeout_s
    while not info.is_published():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True
