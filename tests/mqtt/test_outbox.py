"""The persisted outbox: sequence numbers never repeat, nothing acknowledged comes back, bounds hold."""

from __future__ import annotations

from pathlib import Path

from agent.mqtt import Outbox, OutboxLimits


def _payload(seq: int, stream: str) -> bytes:
    return f"{stream}:{seq}".encode()


def test_entries_survive_a_restart_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    seqs = [box.enqueue("events", _payload).seq for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    box.ack(1)
    reopened = Outbox(tmp_path)
    assert reopened.stream == box.stream
    assert [e.seq for e in reopened.pending()] == [0, 2, 3, 4]
    assert reopened.pending()[1].payload == f"{box.stream}:2".encode()
    assert reopened.enqueue("events", _payload).seq == 5


def test_numbers_are_not_reused_after_everything_was_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for _ in range(3):
        box.ack(box.enqueue("events", _payload).seq)
    assert len(box) == 0
    assert Outbox(tmp_path).enqueue("events", _payload).seq == 3


def test_ack_is_idempotent(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    seq = box.enqueue("events", _payload).seq
    assert box.ack(seq) is True
    assert box.ack(seq) is False


def test_status_coalesces_to_the_latest(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.enqueue("status", _payload, retain=True, coalesce_key="status")
    box.enqueue("events", _payload)
    last = box.enqueue("status", _payload, retain=True, coalesce_key="status")
    assert [(e.channel, e.seq) for e in box.pending()] == [("events", 1), ("status", last.seq)]
    assert box.coalesced == 1
    assert [e.seq for e in Outbox(tmp_path).pending()] == [1, 2]


def test_overflow_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path, OutboxLimits(max_entries=3))
    for _ in range(5):
        box.enqueue("events", _payload)
    assert [e.seq for e in box.pending()] == [2, 3, 4]
    assert box.dropped_overflow == 2


def test_byte_limit(tmp_path: Path) -> None:
    box = Outbox(tmp_path, OutboxLimits(max_bytes=300))
    for _ in range(10):
        box.enqueue("events", lambda seq, stream: b"x" * 100)
    assert 1 <= len(box) <= 2
    assert box.dropped_overflow >= 8


def test_corrupt_entries_are_removed_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.enqueue("events", _payload)
    box.enqueue("events", _payload)
    (tmp_path / f"{0:020d}.msg").write_bytes(b"garbage without header")
    (tmp_path / f"{7:020d}.msg").write_bytes(b'{"seq": 3, "channel": "events", "retain": false}\nx')
    (tmp_path / "half-written.tmp").write_bytes(b"x")
    reopened = Outbox(tmp_path)
    assert [e.seq for e in reopened.pending()] == [1]
    assert reopened.dropped_corrupt == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_garbled_stream_file_starts_a_new_stream(tmp_path: Path) -> None:
    first = Outbox(tmp_path).stream
    (tmp_path / "stream").write_text("not hex")
    assert Outbox(tmp_path).stream != first
