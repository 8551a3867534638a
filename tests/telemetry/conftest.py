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
from tests.controller.conftest import (  # noqa: F401  (fixtures)
    ControllerEnv,
    controller_settings,
    db_url,
    env,
    keyring_dir,
    pg_server,
)


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


def include_routers(env: ControllerEnv) -> ControllerEnv:  # noqa: F811
    """The telemetry and sample routers on the test app (a no-op once the app includes them itself)."""
    from controller.samples import api as samples_api
    from controller.telemetry import api as telemetry_api
    from controller.telemetry import prometheus

    app = env.client.app
    paths = {getattr(r, "path", "") for r in app.routes}  # type: ignore[attr-defined]
    for router, probe in ((telemetry_api.router, "/api/v1/telemetry/latency"), (prometheus.router, "/metrics"),
                          (samples_api.router, "/api/v1/samples")):
        if probe not in paths:
            app.include_router(router)  # type: ignore[attr-defined]
    return env


@pytest.fixture
def api(env: ControllerEnv) -> ControllerEnv:  # noqa: F811
    return include_routers(env)
