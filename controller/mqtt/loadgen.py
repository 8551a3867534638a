"""A light fleet of MQTT device subscribers on one epoll loop, for load tests and benchmarks.

Why not N paho clients with `loop_start()`: paho's own loop uses `select()`, which breaks once a file
descriptor passes 1024 (about 340 clients per process), and N threads cost more than the broker. Here
one thread drives every client through paho's external-loop API (`loop_read` / `loop_write` /
`loop_misc`) with `epoll`, connects are paced so the broker's listen backlog never overflows, and each
client only subscribes to its own `edgefleet/v1/<device>/assignment` and counts what arrives.

This is a load generator, not an agent: it verifies nothing and publishes nothing. Linux only (epoll).
"""

from __future__ import annotations

import contextlib
import resource
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import wire
from controller.mqtt.errors import BrokerUnavailable


class SubscriberFleet:
    def __init__(self, host: str, port: int, device_ids: Sequence[str], *, max_pending_connects: int = 50,
                 credentials: Callable[[str], tuple[str, str]] | None = None) -> None:
        self.host = host
        self.port = port
        self.device_ids = list(device_ids)
        self.max_pending_connects = max_pending_connects
        self.credentials = credentials
        self.received = 0
        self.subscribed = 0
        self.last_payload: dict[str, bytes] = {}
        self._clients: dict[int, mqtt.Client] = {}
        self._lock = threading.Lock()
        self._all_received = threading.Event()
        self._expected = 0
        self._stop = threading.Event()
        self._epoll = select.epoll()
        self._thread: threading.Thread | None = None
        _raise_fd_limit(4 * len(self.device_ids) + 256)

    # -- control ------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> None:
        """Connect and subscribe every device; returns once all subscriptions are acknowledged."""
        self._thread = threading.Thread(target=self._loop, name="subscriber-fleet", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        for device_id in self.device_ids:
            while True:
                with self._lock:
                    waiting = len(self._clients) - self.subscribed
                if waiting < self.max_pending_connects:
                    break
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"only {self.subscribed} of {len(self.device_ids)} subscribed")
                time.sleep(0.001)
            self._connect(device_id)
        while self.subscribed < len(self.device_ids):
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"only {self.subscribed} of {len(self.device_ids)} subscribed")
            time.sleep(0.005)

    def expect(self, count: int) -> None:
        """Reset the counter; `wait` returns once `count` more messages arrived."""
        with self._lock:
            self.received = 0
            self._expected = count
            self._all_received.clear()

    def wait(self, timeout_s: float) -> bool:
        return self._all_received.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for client in list(self._clients.values()):
            with contextlib.suppress(Exception):
                client.disconnect()
                sock = client.socket()
                if sock is not None:
                    sock.close()
        self._epoll.close()

    # -- internals ----------------------------------------------------------------------------------

    def _connect(self, device_id: str) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, userdata=device_id)
        if self.credentials is not None:
            client.username_pw_set(*self.credentials(device_id))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect(self.host, self.port, keepalive=600)
        sock = client.socket()
        assert sock is not None
        fd = sock.fileno()
        with self._lock:
            self._clients[fd] = client
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLOUT)
        # paho asks for write readiness when it queued bytes (a PUBACK, a SUBSCRIBE) from any thread.
        client.on_socket_register_write = lambda c, u, s: self._want(fd, True)
        client.on_socket_unregister_write = lambda c, u, s: self._want(fd, False)
        return client

    def _want(self, fd: int, write: bool) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._epoll.modify(fd, select.EPOLLIN | (select.EPOLLOUT if write else 0))

    def _loop(self) -> None:
        last_misc = time.monotonic()
        while not self._stop.is_set():
            for fd, mask in self._epoll.poll(0.05):
                client = self._clients.get(fd)
                if client is None:
                    continue
                if mask & select.EPOLLIN:
                    client.loop_read(100)
                if mask & select.EPOLLOUT:
                    client.loop_write()  # paho unregisters write interest itself once its queue is empty
            if time.monotonic() - last_misc > 1.0:
                for client in list(self._clients.values()):
                    client.loop_misc()
                last_misc = time.monotonic()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(wire.topic(userdata, "assignment"), qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._lock:
            self.subscribed += 1

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received += 1
            self.last_payload[userdata] = bytes(message.payload)
            if self._expected and self.received >= self._expected:
                self._all_received.set()


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
