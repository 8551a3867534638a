"""The agent's persisted outbox: status and events are written to disk before they are published.

Why: a device loses its broker connection (or its power) at any moment, and the controller's rollout
decisions depend on every `gate_failed` or `rolled_back` event arriving. An entry is written atomically
(temporary file, fsync, `os.replace`, fsync of the folder) before anyone tries to send it, and deleted
only after the broker acknowledged it (QoS 1 PUBACK). Delivery is therefore at-least-once; the
controller drops duplicates by (device, stream, seq).

Layout of the folder::

    stream          random hex id of this outbox, fixed at creation (new disk → new stream)
    next_seq        lowest sequence number never handed out (a floor; entries may be higher)
    <seq>.msg       one pending message: a JSON header line, then the payload bytes

Sequence numbers are strictly increasing per stream and survive restarts: the next one is the larger
of `next_seq` and the highest pending entry + 1; `next_seq` is raised before the newest entry is
deleted, so a number is never reused.

Bounds: at most `max_entries` entries and `max_bytes` bytes; when full, the oldest entries are dropped
and counted (a device offline for weeks keeps its most recent history). Entries enqueued with a
`coalesce_key` replace older pending entries with the same key (only the latest `status` matters).
Unreadable entries (disk corruption) are deleted and counted, never retried.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.mqtt.errors import OutboxError

_SUFFIX = ".msg"


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    channel: str
    payload: bytes
    retain: bool
    coalesce_key: str | None


@dataclass(frozen=True)
class OutboxLimits:
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024


class Outbox:
    """Thread-safe: paho's thread acknowledges while the owner enqueues."""

    def __init__(self, root: Path, limits: OutboxLimits | None = None) -> None:
        self.root = root
        self.limits = limits or OutboxLimits()
        self._lock = threading.Lock()
        self.dropped_overflow = 0
        self.dropped_corrupt = 0
        self.coalesced = 0
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.stream = self._load_or_create_stream()
            self._entries: dict[int, OutboxEntry] = {}
            self._sizes: dict[int, int] = {}
            self._load_entries()
            floor = self._read_next_seq()
        except OSError as e:
            raise OutboxError(f"cannot open outbox at {root}: {e}") from e
        self._next_seq = max([floor, *(seq + 1 for seq in self._entries)])

    # -- public API -------------------------------------------------------------------------------

    def enqueue(
        self,
        channel: str,
        build_payload: Callable[[int, str], bytes],
        *,
        retain: bool = False,
        coalesce_key: str | None = None,
    ) -> OutboxEntry:
        """Assign the next sequence number, build the payload with it, persist, and return the entry.

        `build_payload(seq, stream)` lets the caller embed the number in the message it signs or
        encodes; the entry is on disk before this returns.
        """
        with self._lock:
            seq = self._next_seq
            payload = build_payload(seq, self.stream)
            entry = OutboxEntry(seq, channel, payload, retain, coalesce_key)
            header = json.dumps(
                {"seq": seq, "channel": channel, "retain": retain, "coalesce_key": coalesce_key},
                separators=(",", ":"),
            ).encode()
            data = header + b"\n" + payload
            try:
                _write_atomic(self._path(seq), data)
            except OSError as e:
                raise OutboxError(f"cannot persist outbox entry {seq} in {self.root}: {e}") from e
            self._next_seq = seq + 1
            self._entries[seq] = entry
            self._sizes[seq] = len(data)
            if coalesce_key is not None:
                for old in [s for s, e in self._entries.items() if e.coalesce_key == coalesce_key and s != seq]:
                    self._remove(old)
                    self.coalesced += 1
            self._enforce_limits()
            return entry

    def pending(self) -> list[OutboxEntry]:
        """Entries not yet acknowledged, oldest first."""
        with self._lock:
            return [self._entries[s] for s in sorted(self._entries)]

    def ack(self, seq: int) -> bool:
        """The broker has the message: forget it. Returns False if it was already gone."""
        with self._lock:
            if seq not in self._entries:
                return False
            self._remove(seq)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def next_seq(self) -> int:
        with self._lock:
            return self._next_seq

    # -- internals --------------------------------------------------------------------------------

    def _remove(self, seq: int) -> None:
        if seq + 1 >= self._next_seq:
            # Removing the newest entry would lose the only record of its number: raise the floor first.
            try:
                _write_atomic(self.root / "next_seq", str(self._next_seq).encode())
            except OSError as e:
                raise OutboxError(f"cannot persist next_seq in {self.root}: {e}") from e
        self._path(seq).unlink(missing_ok=True)
        del self._entries[seq]
        del self._sizes[seq]

    def _enforce_limits(self) -> None:
        total = sum(self._sizes.values())
        for seq in sorted(self._entries):
            if len(self._entries) <= self.limits.max_entries and total <= self.limits.max_bytes:
                break
            total -= self._sizes[seq]
            self._remove(seq)
            self.dropped_overflow += 1

    def _path(self, seq: int) -> Path:
        return self.root / f"{seq:020d}{_SUFFIX}"

    def _load_or_create_stream(self) -> str:
        path = self.root / "stream"
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
            return value
        value = secrets.token_hex(16)
        _write_atomic(path, value.encode())
        return value

    def _read_next_seq(self) -> int:
        try:
            text = (self.root / "next_seq").read_text().strip()
        except FileNotFoundError:
            return 0
        return int(text) if text.isdigit() else 0

    def _load_entries(self) -> None:
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            try:
                raw = path.read_bytes()
                header_raw, payload = raw.split(b"\n", 1)
                header = json.loads(header_raw)
                seq = header["seq"]
                if not isinstance(seq, int) or path.name != f"{seq:020d}{_SUFFIX}":
                    raise ValueError(f"name {path.name} does not match seq {seq!r}")
                entry = OutboxEntry(
                    seq, str(header["channel"]), payload, bool(header["retain"]), header.get("coalesce_key")
                )
            except (ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                self.dropped_corrupt += 1
                continue
            self._entries[seq] = entry
            self._sizes[seq] = len(raw)
        for tmp in self.root.glob("*.tmp"):
            tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
