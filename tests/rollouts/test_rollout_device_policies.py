"""A rollout's device-policy overrides, from the operator's POST to the assignment a device verifies.

Runs on SQLite and PostgreSQL through the REST API with the real director (signing keys, SQL ledger,
`service.release_policies`); the broker is our `Publisher` port keeping the retained payload per device.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import insert, inspect, select

from controller.app import create_app
from controller.auth import create_api_token
from controller.cli_rollout import parse_device_policies
from controller.db import migrate
from controller.db.base import make_engine, make_session_factory
from controller.db.models import ModelRelease
from controller.rollouts import FileRolloutStore, RolloutEngine, device_policies
from controller.rollouts.assigner import AssignmentPolicies, DirectorAssigner
from controller.rollouts.codec import record_to_json
from controller.rollouts.models import RolloutRow
from controller.rollouts.records import new_rollout
from controller.rollouts.service import DatabaseFleetView, release_policies
from controller.rollouts.sql import SqlAssignmentLedger, SqlRolloutStore
from controller.settings import Settings
from manifests import assignment, director
from manifests.assignment import Assignment, CapturePolicy, GatePolicy, ProbationPolicy
from manifests.keyring import Keyring

from .sim import NEW, OLD, fleet_of, spec
from .test_rollback_assignments import Broker, pins, signed
from .test_sql_and_api import BODY, _auth, _enroll, db_url  # noqa: F401  (db_url: SQLite and PostgreSQL)

FLOORS = {NEW.version: 0.9, OLD.version: 0.8}  # each release's accuracy floor, as set at upload
OVERRIDES = {
    "gate": {"max_latency_regression_ratio": 1.2, "min_accuracy": 0.93},
    "probation": {"window_s": 3600, "max_confidence_drop": 0.05},
}


class Director:
    """The app's director wiring on one test database: keys, broker port, engine."""

    def __init__(self, client: TestClient, tokens: dict[str, str], keys: Keyring, broker: Broker,
                 engine: RolloutEngine) -> None:
        self.client, self.tokens, self.keys, self.broker, self.engine = client, tokens, keys, broker, engine

    def create(self, **change: Any) -> Any:
        return self.client.post("/api/v1/rollouts", json={**BODY, **change}, headers=_auth(self.tokens, "operator"))

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/api/v1/rollouts/{rollout_id}", headers=_auth(self.tokens, "viewer"))
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def received(self, device_id: str) -> Assignment:
        return signed(self.broker.retained[device_id], self.keys)

    def signed_body(self, device_id: str) -> dict[str, Any]:
        return director.open_envelope(self.broker.retained[device_id]).signed  # type: ignore[no-any-return]


@pytest.fixture
def fleet(tmp_path: Path, db_url: str) -> Iterator[Director]:  # noqa: F811
    app = create_app(Settings(state_dir=tmp_path / "state", database_url=db_url))
    keys = Keyring.create(tmp_path / "keys")
    broker = Broker()
    with TestClient(app) as client:
        ctx = app.state.ctx
        assigner = DirectorAssigner(SqlAssignmentLedger(ctx.session_factory), keys.signers("director"), broker,
                                    pins, policies_for=release_policies(ctx.session_factory))
        engine = RolloutEngine(SqlRolloutStore(ctx.session_factory), DatabaseFleetView(ctx.session_factory),
                               assigner)
        ctx.extras["rollout_engine"] = engine
        with ctx.session_factory() as session:
            for i in range(4):
                _enroll(session, f"dev-{i:02d}", ["lab"])
            for version, floor in FLOORS.items():
                session.add(ModelRelease(name=NEW.model, version=version, min_accuracy=floor, status="published",
                                         model_key="k", golden_key="g", model_sha256="0" * 64, model_bytes=1,
                                         created_by="test"))
            _, operator = create_api_token(session, name="olivia", role="operator")
            _, viewer = create_api_token(session, name="victor", role="viewer")
            session.commit()
        yield Director(client, {"operator": operator, "viewer": viewer}, keys, broker, engine)


def test_overrides_reach_the_signed_assignment_and_its_revert(fleet: Director) -> None:
    created = fleet.create(device_policies=OVERRIDES)
    assert created.status_code == 201, created.text
    shown = {"gate": {"max_latency_regression_ratio": 1.2, "min_accuracy": 0.93},
             "probation": {"window_s": 3600.0, "max_confidence_drop": 0.05}}
    assert created.json()["device_policies"] == shown
    assert fleet.rollout("digits-2")["device_policies"] == shown

    fleet.engine.step()
    (canary,) = fleet.broker.retained
    forward = fleet.received(canary)
    assert forward.release == NEW and forward.rollout_id == "digits-2"
    # the operator's fields win over the release floor (0.9) and the defaults; nothing else moves
    assert forward.probation == ProbationPolicy(window_s=3600.0, max_confidence_drop=0.05)
    assert forward.gate == GatePolicy(min_accuracy=0.93, max_latency_regression_ratio=1.2)
    assert forward.capture == CapturePolicy()

    rolled = fleet.client.post("/api/v1/rollouts/digits-2/rollback", headers=_auth(fleet.tokens, "operator"))
    assert rolled.status_code == 200, rolled.text
    revert = fleet.received(canary)
    assert revert.release == OLD and revert.version > forward.version and revert.rollout_id == "digits-2"
    assert revert.probation == forward.probation
    # a revert waives the accuracy drop as always, and keeps its own release's floor, not the new model's
    assert revert.gate == GatePolicy(min_accuracy=FLOORS[OLD.version], max_latency_regression_ratio=1.2,
                                     max_accuracy_drop=None)


def test_without_overrides_the_rollout_signs_what_it_always_signed(fleet: Director) -> None:
    created = fleet.create()
    assert created.status_code == 201, created.text
    assert created.json()["device_policies"] == {}
    fleet.engine.step()
    (canary,) = fleet.broker.retained
    got = fleet.received(canary)
    assert (got.gate, got.probation, got.capture) == (GatePolicy(min_accuracy=FLOORS[NEW.version]),
                                                      ProbationPolicy(), CapturePolicy())
    # byte for byte: the signed policy sections are the fleet defaults plus the release floor
    expected = assignment.to_dict(Assignment(
        device_id=got.device_id, version=got.version, issued_at=got.issued_at, expires_at=got.expires_at,
        release=got.release, targets=got.targets, gate=GatePolicy(min_accuracy=FLOORS[NEW.version]),
        rollout_id=got.rollout_id))
    assert fleet.signed_body(canary) == expected
    with fleet.client.app.state.ctx.session_factory() as session:  # type: ignore[attr-defined]
        row = session.get(RolloutRow, "digits-2")
        assert row is not None and row.device_policies is None and "device_policies" not in row.record["spec"]


BAD = [
    ({"probation": {"window": 10}}, "device_policies.probation has unknown fields ['window']"),
    ({"sandbox": {}}, "device_policies has unknown sections ['sandbox']"),
    ({"gate": "strict"}, "device_policies.gate must be an object"),
    ({"probation": {"max_confidence_drop": 1.5}}, "device_policies.probation.max_confidence_drop must be in [0.0, 1.0]"),
    ({"probation": {"window_s": "long"}}, "device_policies.probation.window_s must be a number"),
    ({"probation": {"window_s": None}}, "device_policies.probation.window_s may not be null"),
    ({"capture": {"enabled": 1}}, "device_policies.capture.enabled must be true or false"),
    ({"capture": {"max_samples_per_hour": -1}}, "device_policies.capture.max_samples_per_hour must be >= 0"),
    ({"capture": {"max_bytes_per_day": 1.5}}, "device_policies.capture.max_bytes_per_day must be an integer"),
    ({"gate": {"max_accuracy_drop": None}}, "device_policies.gate.max_accuracy_drop may not be null"),
]


def test_bad_overrides_are_refused_naming_the_field_and_create_nothing(fleet: Director) -> None:
    for overrides, message in BAD:
        answer = fleet.create(device_policies=overrides)
        assert answer.status_code == 422, (overrides, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "invalid_input" and message in error["message"], (overrides, error)
    # a fleet rollback waives the accuracy-drop check; an override of it would be silently dropped
    answer = fleet.create(release={"model": OLD.model, "version": OLD.version}, rollback=True,
                          device_policies={"gate": {"max_accuracy_drop": 0.1}})
    assert answer.status_code == 422 and "gate.max_accuracy_drop" in answer.json()["error"]["message"]
    assert fleet.create(device_policies=["gate"]).status_code == 422
    assert fleet.client.get("/api/v1/rollouts", headers=_auth(fleet.tokens, "viewer")).json() == []
    assert fleet.broker.retained == {}


def test_migration_0006_keeps_existing_rollouts_signing_defaults(db_url: str) -> None:  # noqa: F811
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0005_telemetry_capture")
        record = new_rollout("r1", spec(), list(fleet_of(3).values()), 1000.0, "alice")
        body = record_to_json(record)
        body["revision"] = 1
        columns = {"id": "r1", "state": record.state.value, "release_model": NEW.model,
                   "release_version": NEW.version, "created_by": "alice", "revision": 1, "record": body}
        with engine.begin() as connection:
            connection.execute(insert(RolloutRow).values(**columns))
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == "0006_rollout_device_policies"
        sessions = make_session_factory(engine)
        with sessions() as session:
            assert session.scalar(select(RolloutRow.device_policies).where(RolloutRow.id == "r1")) is None
        store = SqlRolloutStore(sessions)
        loaded = store.load("r1")
        assert loaded.spec == record.spec and not loaded.spec.device_policies
        store.save(loaded)  # the old record carries on under the new schema
        assert release_policies(sessions)(NEW, "r1") == AssignmentPolicies()
        migrate.downgrade(engine, "0005_telemetry_capture")
        assert "device_policies" not in {c["name"] for c in inspect(engine).get_columns("rollouts")}
    finally:
        engine.dispose()


def test_cli_passes_the_overrides_as_a_json_object() -> None:
    assert parse_device_policies(json.dumps(OVERRIDES)) == OVERRIDES
    for bad in ("{probation", "[1, 2]"):
        with pytest.raises(typer.Exit):
            parse_device_policies(bad)


def test_file_store_keeps_the_overrides_in_the_record(tmp_path: Path) -> None:
    overrides = device_policies.parse(OVERRIDES)
    record = new_rollout("r1", replace(spec(), device_policies=overrides), list(fleet_of(3).values()), 1000.0, "al")
    store = FileRolloutStore(tmp_path / "rollouts")
    store.create(record)
    assert store.load("r1").spec.device_policies == overrides
    assert record_to_json(new_rollout("r2", spec(), list(fleet_of(3).values()), 1000.0, "al"))["spec"].keys() == {
        "release", "rollback_release", "rollback", "selector", "waves", "policy"}  # the form without overrides
