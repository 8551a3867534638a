"""The telemetry loop: sample every few seconds, spool, and hand batches to MQTT while connected.

    every sample_every_s:  system sample + model counter deltas ──▶ Point ──▶ TelemetrySpool (disk)
    every batch_every_s:   while connected and fewer than max_in_flight batches unacknowledged:
                           oldest points ──▶ TelemetryBatch ──▶ TelemetryChannel.publish (outbox, QoS 1)

The batch is persisted in the MQTT outbox (with its seq) *before* its points leave the spool, so a
crash between the two steps can only repeat points, never lose them; the controller keeps points unique
by (device, series, resolution, start), so a repeat is harmless. Batches only move to the outbox while
the broker is reachable and a few at a time: while offline, history accumulates in the spool, where it
is rolled up instead of dropped when the bound is reached.

The loop waits on an Event with a timeout between steps: no busy loop, and `stop()` returns at once.
Sample-capture counters (`capture`, a callable) ride along in every batch as they stand when it is built.
Model metrics come through `ModelMetricsSource`, which the inference server implements; the loop never
imports numpy or a runtime itself, so an idle agent without a model stays small.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.metrics.histogram import LatencyHistogram
from agent.telemetry.capture_counts import CaptureCounts
from agent.telemetry.errors import TelemetryError
from agent.telemetry.points import histogram_delta
from agent.telemetry.spool import TelemetrySpool
from agent.telemetry.wire import MAX_POINTS, ModelSample, Point, SystemSample, TelemetryBatch, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one loaded (model, version, variant) since it was loaded."""

    model: str
    version: str
    variant: str
    requests: int
    errors: int
    latency: LatencyHistogram
    loaded_at_s: float = 0.0


class ModelMetricsSource(Protocol):
    def model_counters(self) -> list[ModelCounters]: ...


class SystemSource(Protocol):
    def sample(self) -> SystemSample: ...


class TelemetryChannel(Protocol):
    """Where batches go: the device's MQTT session (see `SessionChannel`)."""

    def is_connected(self) -> bool: ...

    def in_flight(self) -> int:
        """Telemetry batches persisted in the outbox and not yet acknowledged."""
        ...

    def publish(self, build_payload: Callable[[int, str], bytes]) -> int: ...


@dataclass(frozen=True)
class TelemetryConfig:
    device_id: str
    sample_every_s: float = 10.0
    batch_every_s: float = 30.0
    points_per_batch: int = 30
    max_in_flight: int = 4
    hardware_class: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.sample_every_s <= 600:
            raise TelemetryError(f"sample_every_s must be in (0, 600], got {self.sample_every_s}")
        if self.batch_every_s <= 0 or not 1 <= self.points_per_batch <= MAX_POINTS or self.max_in_flight < 1:
            raise TelemetryError("batch_every_s > 0, 1 <= points_per_batch <= 120 and max_in_flight >= 1 needed")


class TelemetryLoop:
    def __init__(
        self,
        config: TelemetryConfig,
        spool: TelemetrySpool,
        channel: TelemetryChannel,
        system: SystemSource,
        models: ModelMetricsSource | None = None,
        update_state: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.time,
        capture: Callable[[], CaptureCounts | None] | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.channel = channel
        self.system = system
        self.models = models
        self.update_state = update_state
        self.clock = clock
        self.capture = capture
        self.batches_sent = 0
        self.errors = 0
        self._previous: dict[tuple[str, str, str], ModelCounters] = {}
        self._last_sample_s = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the two steps (public so tests and the daemon can drive them directly) --------------------

    def sample(self) -> Point:
        now = self.clock()
        point = Point(
            start_s=self._last_sample_s,
            end_s=now,
            resolution_s=max(1, round(self.config.sample_every_s)),
            system=self.system.sample(),
            models=self._model_deltas(),
        )
        self._last_sample_s = now
        self.spool.add(point)
        return point

    def flush(self) -> int:
        """Move spooled points into the outbox while connected; returns the number of batches."""
        sent = 0
        while len(self.spool) and self.channel.is_connected() and self.channel.in_flight() < self.config.max_in_flight:
            points = self.spool.oldest(self.config.points_per_batch)

            def build(seq: int, stream: str, points: list[Point] = points) -> bytes:
                return encode(TelemetryBatch(
                    device_id=self.config.device_id, stream=stream, seq=seq, sent_at=self.clock(),
                    points=tuple(points), hardware_class=self.config.hardware_class,
                    update_state=self.update_state() if self.update_state else None,
                    dropped_points=self.spool.dropped_points, rolled_up_points=self.spool.rolled_up_points,
                    capture=self.capture() if self.capture else None,
                ))

            self.channel.publish(build)
            self.spool.remove_oldest(len(points))
            sent += 1
        self.batches_sent += sent
        return sent

    def _model_deltas(self) -> tuple[ModelSample, ...]:
        if self.models is None:
            return ()
        out: list[ModelSample] = []
        current: dict[tuple[str, str, str], ModelCounters] = {}
        for c in self.models.model_counters():
            key = (c.model, c.version, c.variant)
            current[key] = c
            before = self._previous.get(key)
            if before is not None and (c.requests < before.requests or c.loaded_at_s != before.loaded_at_s):
                before = None  # reloaded: its counters started over
            requests = c.requests - (before.requests if before else 0)
            errors = c.errors - (before.errors if before else 0)
            latency = histogram_delta(c.latency, before.latency if before else None)
            if requests or errors or latency.count:
                out.append(ModelSample(c.model, c.version, c.variant, requests, max(0, min(errors, requests)),
                                       latency))
        self._previous = current
        return tuple(out)

    # -- background thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        next_sample = time.monotonic() + self.config.sample_every_s
        next_batch = time.monotonic() + min(self.config.batch_every_s, self.config.sample_every_s)
        while not self._stop.wait(max(0.0, min(next_sample, next_batch) - time.monotonic())):
            now = time.monotonic()
            try:
                if now >= next_sample:
                    next_sample = now + self.config.sample_every_s
                    self.sample()
                if now >= next_batch:
                    next_batch = now + self.config.batch_every_s
                    self.flush()
            except Exception:  # noqa: BLE001 - telemetry must never take the agent down
                self.errors += 1
                log.exception("telemetry step failed")


class SessionChannel:
    """`TelemetryChannel` over the agent's `AgentSession` (duck-typed to keep imports light)."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def is_connected(self) -> bool:
        return self.session.connected.is_set()

    def in_flight(self) -> int:
        return sum(1 for e in self.session.outbox.pending() if e.channel == "telemetry")

    def publish(self, build_payload: Callable[[int, str], bytes]) -> int:
        return self.session.publish_telemetry(build_payload)


class _Event(Protocol):
    def is_set(self) -> bool: ...


class _Entry(Protocol):
    @property
    def channel(self) -> str: ...


class _Outbox(Protocol):
    def pending(self) -> Sequence[_Entry]: ...


class _Session(Protocol):
    @property
    def connected(self) -> _Event: ...

    @property
    def outbox(self) -> _Outbox: ...

    def publish_telemetry(self, build_payload: Callable[[int, str], bytes]) -> int: ...
