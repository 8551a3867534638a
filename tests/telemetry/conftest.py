"""Fixtures for telemetry and capture tests: migrated databases (SQLite and PostgreSQL), fake metric
sources (our own ports), and an agent MQTT session on a real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from agent.metrics.histogram import LatencyHistogram
from agent.telemetry.collector import ModelCounters
from agent.telemetry.wire import SystemSample
from controller.db import make_engine, make_session_factory
from controller.db import migrate as db_migrate
from tests.controller.conftest import db_url, keyring_dir, pg_server  # noqa: F401  (fixtures)


@pytest.fixture
def session_factory(db_url: str) -> Iterator[sessionmaker[Session]]:  # noqa: F811
    engine = make_engine(db_url)
    db_migrate.upgrade(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


class FakeSystem:
    def __init__(self) -> None:
        self.cpu_pct = 12.5

    def sample(self) -> SystemSample:
        return SystemSample(cpu_pct=self.cpu_pct, mem_used_mb=100.0, mem_total_mb=1000.0, disk_used_pct=40.0,
                            temps_c={"cpu-thermal": 51.5})


class FakeModels:
    """Cumulative counters of one served version, as the inference server keeps them."""

    def __init__(self, model: str = "digits", version: str = "1", variant: str = "ort-fp32") -> None:
        self.key = (model, version, variant)
        self.requests = 0
        self.errors = 0
        self.latency = LatencyHistogram()
        self.recorded: list[float] = []

    def serve(self, latencies_s: list[float], errors: int = 0) -> None:
        for value in latencies_s:
            self.latency.record(value)
            self.recorded.append(value)
        self.requests += len(latencies_s)
        self.errors += errors

    def model_counters(self) -> list[ModelCounters]:
        return [ModelCounters(*self.key, self.requests, self.errors, self.latency.copy(), 1.0)]


@pytest.fixture
def fake_system() -> FakeSystem:
    return FakeSystem()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "telemetry"
