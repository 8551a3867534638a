"""`ChunkedReadClient`: a paho client that reads its socket in large chunks.

paho reads every packet with at least three `recv` calls (the type byte, each remaining-length byte,
the body) and one `select` per packet. An ingest subscriber receives thousands of small packets a
second, and each of those system calls releases and re-takes the GIL that the ingest writer thread
wants too. This client reads up to `read_chunk_bytes` at once and serves paho's small reads from that
buffer; after each `select` it keeps parsing until the buffer is used up, so a buffered packet never
waits for the socket to become readable again.

What it deliberately leaves alone: writing, keepalive, reconnecting and every callback are paho's own.
It overrides paho's `_sock_recv`, the one private method all of paho's reads go through; a paho that
renamed it would simply read unbuffered again, which `test_ingest` would still pass — the speed is
checked by `bench/ingest.py`.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode


class ChunkedReadClient(mqtt.Client):
    read_chunk_bytes = 256 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunk = b""
        self._chunk_pos = 0
        self._chunk_sock: object | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._chunk_sock is not self._sock:  # a new connection: nothing buffered belongs to it
            self._chunk, self._chunk_pos, self._chunk_sock = b"", 0, self._sock
        if self._chunk_pos >= len(self._chunk):
            data = super()._sock_recv(max(bufsize, self.read_chunk_bytes))
            if len(data) <= bufsize:  # nothing left over (also the b"" of a closed connection)
                return data
            self._chunk, self._chunk_pos = data, 0
        start = self._chunk_pos
        self._chunk_pos = min(start + bufsize, len(self._chunk))
        return self._chunk[start:self._chunk_pos]

    @property
    def buffered_bytes(self) -> int:
        return len(self._chunk) - self._chunk_pos if self._chunk_sock is self._sock else 0

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's read step, repeated while whole packets wait in the buffer (the socket may not be
        readable again for them: the bytes are already out of the kernel)."""
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.buffered_bytes and self._sock is not None:
            rc = super().loop_read(max_packets)
        return rc
