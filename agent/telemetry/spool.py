"""The telemetry spool: metric points on disk, bounded, rolled up rather than dropped when full.

Points wait here until they are handed to the MQTT outbox (which only happens while the broker is
reachable, a few batches at a time), so a device offline for days keeps its history in the spool, and
the spool is where the bound is enforced:

    add(point) ─▶ full? ─▶ roll the oldest half of the raw points up to 1-minute points
                        ─▶ still full? roll minute points up to 1-hour points
                        ─▶ still full? drop the oldest points and count them (`dropped_points`)

Persistence: `points.jsonl`, one point per line. A new point is appended and fsynced; anything that
removes points rewrites the file atomically (temporary file, fsync, `os.replace`). A torn last line
after a power loss is skipped and counted as corrupt. `counters.json` keeps the dropped and rolled-up
totals across restarts, because they are reported in every batch.

Not thread-safe by itself: the telemetry loop owns it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from agent.telemetry.errors import SpoolError
from agent.telemetry.points import roll_up
from agent.telemetry.wire import Point, TelemetryWireError, point_from_dict, point_to_dict

ROLLUP_STEPS_S = (60, 3600)


class TelemetrySpool:
    def __init__(self, root: Path, max_points: int = 2000) -> None:
        if max_points < 4:
            raise SpoolError(f"max_points must be at least 4, got {max_points}")
        self.root = root
        self.max_points = max_points
        self.dropped_points = 0
        self.rolled_up_points = 0
        self.corrupt_lines = 0
        self._points: list[Point] = []
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._load()
        except OSError as e:
            raise SpoolError(f"cannot open telemetry spool at {root}: {e}") from e

    @property
    def _file(self) -> Path:
        return self.root / "points.jsonl"

    def __len__(self) -> int:
        return len(self._points)

    def points(self) -> list[Point]:
        return list(self._points)

    def add(self, point: Point) -> None:
        """Persist one point; enforces the bound (roll-ups, then counted drops)."""
        self._points.append(point)
        if len(self._points) > self.max_points:
            self._enforce_bound()
            self._rewrite()
            return
        line = json.dumps(point_to_dict(point), separators=(",", ":"), allow_nan=False) + "\n"
        try:
            with open(self._file, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise SpoolError(f"cannot append to {self._file}: {e}") from e

    def oldest(self, n: int) -> list[Point]:
        return self._points[:n]

    def remove_oldest(self, n: int) -> None:
        """Forget the `n` oldest points: they are persisted in the outbox now."""
        if n <= 0:
            return
        del self._points[:n]
        self._rewrite()

    def _enforce_bound(self) -> None:
        try:
            self._shrink()
        finally:
            self._save_counters()

    def _shrink(self) -> None:
        for resolution_s in ROLLUP_STEPS_S:
            if len(self._points) <= self.max_points:
                return
            finer = [i for i, p in enumerate(self._points) if p.resolution_s < resolution_s]
            if len(finer) < 2:
                continue
            # Roll up the older half of the finer points: recent history keeps its resolution.
            cut = finer[max(1, len(finer) // 2) - 1] + 1
            head, tail = self._points[:cut], self._points[cut:]
            merged = roll_up(head, resolution_s)
            self.rolled_up_points += len(head) - len(merged)
            self._points = merged + tail
        excess = len(self._points) - self.max_points
        if excess > 0:
            del self._points[:excess]
            self.dropped_points += excess

    def _load(self) -> None:
        try:
            counters = json.loads((self.root / "counters.json").read_text())
            self.dropped_points = int(counters.get("dropped_points", 0))
            self.rolled_up_points = int(counters.get("rolled_up_points", 0))
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            pass
        try:
            lines = self._file.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                self._points.append(point_from_dict(json.loads(line)))
            except (ValueError, TelemetryWireError):
                self.corrupt_lines += 1
        if self.corrupt_lines:
            self._rewrite()

    def _save_counters(self) -> None:
        data = json.dumps({"dropped_points": self.dropped_points, "rolled_up_points": self.rolled_up_points})
        _write_atomic(self.root / "counters.json", data.encode())

    def _rewrite(self) -> None:
        _write_atomic(self._file, _lines(self._points))


def _lines(points: Sequence[Point]) -> bytes:
    return "".join(
        json.dumps(point_to_dict(p), separators=(",", ":"), allow_nan=False) + "\n" for p in points
    ).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise SpoolError(f"cannot write {path}: {e}") from e
