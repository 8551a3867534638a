"""Rollouts on the controller database (SQLite and PostgreSQL) and through the REST API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.auth import create_api_token
from controller.db import migrate
from controller.db.base import make_engine, make_session_factory
from controller.db.models import Device, DeviceTag
from controller.rollouts import RolloutEngine, RolloutState
from controller.rollouts.assigner import LedgerEntry
from controller.rollouts.errors import RolloutError, RolloutNotFound, StaleRecord
from controller.rollouts.records import new_rollout
from controller.rollouts.service import DatabaseFleetView
from controller.rollouts.sql import SqlAssignmentLedger, SqlRolloutStore
from controller.settings import Settings
from manifests.assignment import ReleaseRef

from .sim import NEW, OLD, fleet_of, spec
from .test_engine import Assigner


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    server = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return str(server.url.rsplit("/", 1)[0] + "/" + name)


@pytest.fixture
def sessions(db_url: str) -> Iterator[Any]:
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def test_sql_store_round_trips_and_refuses_stale_writers(sessions: Any) -> None:
    store = SqlRolloutStore(sessions)
    record = store.create(new_rollout("r1", spec(), list(fleet_of(12).values()), 1000.0, "alice"))
    assert store.load("r1") == record
    with pytest.raises(StaleRecord):
        store.create(record)
    saved = store.save(record)
    assert saved.revision == 2 and store.load("r1").revision == 2
    with pytest.raises(StaleRecord):
        store.save(record)
    with pytest.raises(RolloutNotFound):
        store.load("nope")
    assert store.list_ids() == ["r1"] and store.list_ids(active_only=True) == ["r1"]


def test_sql_ledger_only_moves_forward(sessions: Any) -> None:
    ledger = SqlAssignmentLedger(sessions)
    assert ledger.latest("dev-1") is None
    ledger.record("dev-1", LedgerEntry(1, NEW, "r1", 2e9, b"signed-1"))
    ledger.record("dev-1", LedgerEntry(2, OLD, "r1", 2e9, b"signed-2"))
    latest = ledger.latest("dev-1")
    assert latest is not None and (latest.version, latest.release, latest.payload) == (2, OLD, b"signed-2")
    with pytest.raises(RolloutError):
        ledger.record("dev-1", LedgerEntry(2, NEW, "r2", 2e9, b"again"))


def _enroll(session: Any, device_id: str, tags: list[str], online: bool = True) -> None:
    device = Device(id=device_id, hardware_class="x86-avx2", cert_serial=uuid.uuid4().hex,
                    cert_not_after=datetime.now(timezone.utc) + timedelta(days=30), public_key_sha256="0" * 64,
                    mqtt_username=device_id, mqtt_password_hash="x", online=online,
                    current_model=OLD.model, current_version=OLD.version)
    device.tags = [DeviceTag(tag=t) for t in tags]
    session.add(device)


@pytest.fixture
def api(tmp_path: Path, db_url: str) -> Iterator[tuple[TestClient, dict[str, str], Assigner]]:
    settings = Settings(state_dir=tmp_path / "state", database_url=db_url)
    app = create_app(settings)
    with TestClient(app) as client:
        ctx = app.state.ctx
        assigner = Assigner()
        ctx.extras["rollout_engine"] = RolloutEngine(SqlRolloutStore(ctx.session_factory),
                                                     DatabaseFleetView(ctx.session_factory), assigner)
        with ctx.session_factory() as session:
            for i in range(10):
                _enroll(session, f"dev-{i:02d}", ["lab"] if i < 8 else ["other"])
            _, operator = create_api_token(session, name="olivia", role="operator")
            _, viewer = create_api_token(session, name="victor", role="viewer")
            session.commit()
        yield client, {"operator": operator, "viewer": viewer}, assigner


BODY = {"id": "digits-2", "release": {"model": "digits", "version": "2"}, "selector": {"tags": ["lab"]},
        "waves": [{"count": 1, "soak_s": 0}, {"percent": 100, "soak_s": 0}],
        "policy": {"max_latency_regression_ratio": 1.5, "auto_rollback": True}}


def _auth(tokens: dict[str, str], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[role]}"}


def test_create_inspect_act_and_audit(api: Any) -> None:
    client, tokens, assigner = api
    created = client.post("/api/v1/rollouts", json=BODY, headers=_auth(tokens, "operator"))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["state"] == "pending" and body["devices"] == 8 and body["created_by"] == "olivia"
    assert [w["size"] for w in body["waves_detail"]] == [1, 7]
    engine: RolloutEngine = client.app.state.ctx.extras["rollout_engine"]  # type: ignore[attr-defined]
    engine.step()
    canary = engine.store.load("digits-2").wave_devices(0)
    assert list(canary) == [d for d, _, _ in assigner.issued]

    paused = client.post("/api/v1/rollouts/digits-2/pause", json={"reason": "lunch"},
                         headers=_auth(tokens, "operator"))
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    refused = client.post("/api/v1/rollouts/digits-2/pause", headers=_auth(tokens, "operator"))
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    assert client.post("/api/v1/rollouts/digits-2/resume", headers=_auth(tokens, "viewer")).status_code == 403
    rolled = client.post("/api/v1/rollouts/digits-2/rollback", headers=_auth(tokens, "operator"))
    assert rolled.json()["state"] == "rolled_back"
    assert assigner.issued[-1][1] == ReleaseRef("digits", "1")  # back to what the device ran before

    audit = client.get("/api/v1/rollouts/digits-2/history", headers=_auth(tokens, "viewer")).json()
    assert [(h["trigger"], h["actor"]) for h in audit] == [
        ("create", "olivia"), ("start", "engine"), ("pause", "olivia"), ("rollback", "olivia")]
    assert audit[2]["reason"] == "lunch"
    listing = client.get("/api/v1/rollouts?state=rolled_back", headers=_auth(tokens, "viewer")).json()
    assert [r["id"] for r in listing] == ["digits-2"]
    one = client.get("/api/v1/rollouts/digits-2", headers=_auth(tokens, "viewer")).json()
    progress = {p["device_id"]: p for p in one["device_progress"]}
    assert progress[next(iter(canary))]["state"] == "reverted"
    assert engine.store.load("digits-2").state == RolloutState.ROLLED_BACK


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"waves": []}, 422, "invalid_request"),
        ({"waves": [{"count": 1, "percent": 5}]}, 422, "invalid_input"),
        ({"id": "bad/id"}, 422, "invalid_request"),
        ({"selector": {"tags": ["nobody"]}}, 422, "invalid_input"),
        ({"policy": {"auto_halt": False, "auto_rollback": True}}, 422, "invalid_input"),
        ({"surprise": 1}, 422, "invalid_request"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(api: Any, change: dict[str, Any], status: int, code: str) -> None:
    client, tokens, _ = api
    answer = client.post("/api/v1/rollouts", json={**BODY, **change}, headers=_auth(tokens, "operator"))
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


def test_duplicates_unknown_ids_and_roles(api: Any) -> None:
    client, tokens, _ = api
    assert client.post("/api/v1/rollouts", json=BODY, headers=_auth(tokens, "viewer")).status_code == 403
    assert client.post("/api/v1/rollouts", json=BODY, headers=_auth(tokens, "operator")).status_code == 201
    assert client.post("/api/v1/rollouts", json=BODY, headers=_auth(tokens, "operator")).status_code == 409
    assert client.get("/api/v1/rollouts/nope", headers=_auth(tokens, "viewer")).status_code == 404
    assert client.post("/api/v1/rollouts/digits-2/explode", headers=_auth(tokens, "operator")).status_code == 422
    assert client.get("/api/v1/rollouts").status_code == 401


def test_one_replica_drives_each_rollout(db_url: str, sessions: Any) -> None:
    from controller.rollouts.sql import PgRolloutLeases

    first, second = PgRolloutLeases(make_engine(db_url)), PgRolloutLeases(make_engine(db_url))
    try:
        assert first.holds("r1") and first.holds("r1")
        if db_url.startswith("sqlite"):
            assert second.holds("r1")  # one process: no contention to arbitrate
            return
        assert not second.holds("r1") and second.holds("r2")
        first.close()  # the replica dies: its locks go with its connection
        assert second.holds("r1")
    finally:
        first.close()
        second.close()
