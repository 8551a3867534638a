"""Certificates from a real fleet CA and small paho clients for the mutual-TLS broker tests."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion

from controller.enrollment.ca import FleetCA
from controller.security.files import write_private


@dataclass(frozen=True)
class ClientFiles:
    name: str
    cert_file: Path
    key_file: Path
    serial_hex: str


def issue_client(ca: FleetCA, folder: Path, device_id: str) -> ClientFiles:
    """What enrollment issues: a device key made locally, its certificate from the fleet CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue(device_id, key.public_key(), validity_days=30)
    key_file, cert_file = folder / f"{device_id}.key", folder / f"{device_id}.crt"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(key_file, pem, 0o600)
    write_private(cert_file, issued.pem.encode(), 0o644)
    return ClientFiles(device_id, cert_file, key_file, issued.serial_hex)


@dataclass
class TlsClient:
    """A paho MQTT 5 client over mutual TLS that records what happens to it."""

    host: str
    port: int
    ca_file: Path
    files: ClientFiles | None
    client_id: str
    connected: threading.Event = field(default_factory=threading.Event)
    refused: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    suback: dict[int, list[int]] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set(
            ca_certs=str(self.ca_file),
            certfile=str(self.files.cert_file) if self.files else None,
            keyfile=str(self.files.key_file) if self.files else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        (self.refused if reason.is_failure else self.connected).set()

    def _on_disconnect(self, client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        self.disconnected.set()

    def _on_subscribe(self, client, userdata, mid, reasons, props):  # type: ignore[no-untyped-def]
        self.suback[mid] = [r.value for r in reasons]

    def connect(self, timeout_s: float = 10.0) -> bool:
        """True when the broker accepted us; False when it refused or the TLS handshake failed."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (ssl.SSLError, OSError) as e:
            self.error = repr(e)
            return False
        self.client.loop_start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.connected.is_set():
                return True
            if self.refused.is_set() or self.disconnected.is_set():
                return False
            time.sleep(0.02)
        return False

    def subscribe(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        _, mid = self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + timeout_s
        while mid not in self.suback:
            if time.monotonic() > deadline:
                raise AssertionError(f"no SUBACK for {topic}")
            time.sleep(0.02)
        return self.suback[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
