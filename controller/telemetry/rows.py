"""Decoded telemetry batches → table rows, without touching a database.

The writer stores one flush (hundreds of batches) at a time. This module turns such a flush into the
rows of the three tables once, as plain tuples in a fixed column order, and renders them either as
PostgreSQL COPY text (one buffer per table: one round trip, no per-value adaptation in the driver) or
as dictionaries for an executemany elsewhere (SQLite).

Rows are keyed by the tables' unique keys, so a flush that carries the same point twice yields one
row; duplicates *across* flushes are the database's business (unique keys, ON CONFLICT DO NOTHING).

It deliberately does not validate: batches arrive decoded by `agent.telemetry.wire`, which already
refused anything malformed. The one thing PostgreSQL refuses that the wire format allows (a NUL
character in a text field) is checked in `storable`, so such a batch is rejected alone instead of
failing the whole flush.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from itertools import compress
from typing import Any

from agent.metrics.histogram import LatencyHistogram
from agent.telemetry import wire as twire

BATCH_COLUMNS = ("device_id", "stream", "seq", "received_at", "sent_at", "points", "dropped_points",
                 "rolled_up_points", "capture")
SYSTEM_COLUMNS = ("device_id", "resolution_s", "start_at", "end_at", "samples", "cpu_pct", "mem_used_mb",
                  "disk_used_pct", "temp_max_c", "temps_c")
MODEL_COLUMNS = ("device_id", "hardware_class", "model", "version", "variant", "resolution_s", "start_at",
                 "end_at", "requests", "errors", "latency_count", "latency_sum_s", "latency_max_s", "buckets")
_TIME_COLUMNS = frozenset({"received_at", "sent_at", "start_at", "end_at"})

BatchKey = tuple[str, str, int]
# COPY's text format gives these four characters a meaning; everything else is taken literally.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def storable(batch: twire.TelemetryBatch) -> str | None:
    """Why `batch` cannot be stored as it is (None when it can): PostgreSQL text cannot hold NUL."""
    texts = [batch.device_id, batch.stream, batch.hardware_class or ""]
    for p in batch.points:
        texts.extend(p.system.temps_c)
        for m in p.models:
            texts += (m.model, m.version, m.variant)
    return "a text field holds a NUL character" if any("\x00" in t for t in texts) else None


@dataclass
class FlushRows:
    """The rows of one flush; times are epoch seconds, histograms stay `LatencyHistogram`s until
    rendered. `models` and `systems` are keyed by the tables' unique keys (last one wins)."""

    received_s: float
    batches: dict[BatchKey, tuple[Any, ...]] = field(default_factory=dict)
    systems: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    models: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    owners: dict[tuple[Any, ...], BatchKey] = field(default_factory=dict)  # point key -> its batch
    repeated: int = 0  # batches named twice in the flush (only the first is kept)

    @classmethod
    def build(cls, batches: Iterable[twire.TelemetryBatch], received_s: float,
              hardware_classes: dict[str, str] | None = None) -> FlushRows:
        rows = cls(received_s)
        classes = hardware_classes or {}
        for b in batches:
            key = (b.device_id, b.stream, b.seq)
            if key in rows.batches:
                rows.repeated += 1
                continue
            rows.batches[key] = (b.device_id, b.stream, b.seq, received_s, b.sent_at, len(b.points),
                                 b.dropped_points, b.rolled_up_points,
                                 None if b.capture is None else dict(vars(b.capture)))  # asdict: slower
            hardware_class = b.hardware_class or classes.get(b.device_id, "")
            for p in b.points:
                s = p.system
                system_key = ("system", b.device_id, p.resolution_s, p.start_s)
                rows.owners[system_key] = key
                rows.systems[system_key] = (
                    b.device_id, p.resolution_s, p.start_s, p.end_s, p.samples, s.cpu_pct, s.mem_used_mb,
                    s.disk_used_pct, max(s.temps_c.values()) if s.temps_c else None, s.temps_c)
                for m in p.models:
                    h = m.latency
                    model_key = ("model", b.device_id, m.model, m.version, m.variant, p.resolution_s, p.start_s)
                    rows.owners[model_key] = key
                    rows.models[model_key] = (
                        b.device_id, hardware_class, m.model, m.version, m.variant, p.resolution_s, p.start_s,
                        p.end_s, m.requests, m.errors, h.count, h.sum_s, h.max_s, h)
        return rows

    def only(self, keys: set[BatchKey]) -> FlushRows:
        """The rows of the batches in `keys` (the ones the database did not have yet)."""
        kept = FlushRows(self.received_s, {k: v for k, v in self.batches.items() if k in keys})
        kept.systems = {k: v for k, v in self.systems.items() if self.owners[k] in keys}
        kept.models = {k: v for k, v in self.models.items() if self.owners[k] in keys}
        return kept

    def model_histograms(self) -> list[tuple[tuple[str, str], int, int, LatencyHistogram]]:
        """((model, version), requests, errors, latency) of every model row: what /metrics adds up."""
        return [((r[2], r[3]), r[8], r[9], r[13]) for r in self.models.values()]

    def tables(self) -> list[tuple[str, Sequence[str], list[tuple[Any, ...]]]]:
        return [("telemetry_batches", BATCH_COLUMNS, list(self.batches.values())),
                ("telemetry_system_points", SYSTEM_COLUMNS, list(self.systems.values())),
                ("telemetry_model_points", MODEL_COLUMNS, list(self.models.values()))]


def buckets_json(h: LatencyHistogram) -> str:
    """The sparse `{"<index>": count}` JSON of a histogram, as the model points table holds it."""
    counts = h.counts
    return "{" + ", ".join([f'"{i}": {counts[i]}' for i in compress(range(len(counts)), counts)]) + "}"


def buckets_dict(h: LatencyHistogram) -> dict[str, int]:
    return {str(i): c for i, c in enumerate(h.counts) if c}


def copy_text(table: str, rows: Sequence[tuple[Any, ...]]) -> bytes:
    """Rows of `table` in PostgreSQL's COPY text format (tab-separated, `\\N` for NULL, ISO timestamps),
    one formatted line per row: the flush's hot loop, so no per-value dispatch."""
    line = _COPY_LINES[table]
    return "".join([line(row) for row in rows]).encode("utf-8")


def _batch_line(r: tuple[Any, ...]) -> str:
    capture = "\\N" if r[8] is None else json.dumps(r[8])  # numbers and plain keys only: nothing to escape
    return (f"{_text(r[0])}\t{_text(r[1])}\t{r[2]}\t{_time(r[3])}\t{_time(r[4])}\t{r[5]}\t{r[6]}\t{r[7]}\t"
            f"{capture}\n")


def _system_line(r: tuple[Any, ...]) -> str:
    return (f"{_text(r[0])}\t{r[1]}\t{_time(r[2])}\t{_time(r[3])}\t{r[4]}\t{_nullable(r[5])}\t"
            f"{_nullable(r[6])}\t{_nullable(r[7])}\t{_nullable(r[8])}\t{_text(json.dumps(dict(r[9])))}\n")


def _model_line(r: tuple[Any, ...]) -> str:
    return (f"{_text(r[0])}\t{_text(r[1])}\t{_text(r[2])}\t{_text(r[3])}\t{_text(r[4])}\t{r[5]}\t"
            f"{_time(r[6])}\t{_time(r[7])}\t{r[8]}\t{r[9]}\t{r[10]}\t{r[11]!r}\t{r[12]!r}\t{buckets_json(r[13])}\n")


_COPY_LINES = {"telemetry_batches": _batch_line, "telemetry_system_points": _system_line,
               "telemetry_model_points": _model_line}


def _text(value: str) -> str:
    return value.translate(_COPY_ESCAPES)


@lru_cache(maxsize=8192)  # a point's start and end appear in its system row and in every model row
def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def _nullable(value: float | None) -> str:
    return "\\N" if value is None else repr(float(value))


def as_dicts(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Rows as the ORM columns' Python values (datetimes, dicts), for an executemany."""
    out = []
    for row in rows:
        values = dict(zip(columns, row, strict=True))
        for c in columns:
            if c in _TIME_COLUMNS:
                values[c] = utc(values[c])
            elif c == "buckets":
                values[c] = buckets_dict(values[c])
            elif c == "temps_c":
                values[c] = dict(values[c])
        out.append(values)
    return out
