"""Drop redelivered device messages by (device, stream, seq).

QoS 1 is at-least-once: a PUBACK lost on a broken connection makes paho resend, and an agent restarted
before the acknowledgement republishes from its outbox. Agents send in sequence order, so a per-device
high-water mark plus a window of recently seen numbers catches every duplicate while using bounded
memory. A new `stream` (the device's disk was wiped and its outbox recreated) starts afresh.

This is the in-memory first line; persisted consumers also keep a unique (device, stream, seq) key, so
a controller restart cannot double-count either.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class _DeviceWindow:
    stream: str
    high: int = -1
    seen: set[int] = field(default_factory=set)


class SequenceDeduper:
    """`first_time(device, stream, seq)` is True exactly once per message; thread-safe."""

    def __init__(self, window: int = 4096, max_devices: int = 1_000_000) -> None:
        self.window = window
        self.max_devices = max_devices
        self._devices: OrderedDict[str, _DeviceWindow] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, device_id: str, stream: str, seq: int) -> bool:
        with self._lock:
            state = self._devices.get(device_id)
            if state is None or state.stream != stream:
                state = _DeviceWindow(stream)
                self._devices[device_id] = state
                if len(self._devices) > self.max_devices:
                    self._devices.popitem(last=False)
            self._devices.move_to_end(device_id)
            if seq <= state.high - self.window or seq in state.seen:
                return False
            state.seen.add(seq)
            if seq > state.high:
                state.high = seq
                floor = seq - self.window
                if len(state.seen) > 2 * self.window:
                    state.seen = {s for s in state.seen if s > floor}
            return True
