"""The audit trail: every state-changing request, with its actor and outcome, and no secret."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.auth import create_api_token
from controller.security.audit import AUDIT_LOGGER
from controller.settings import Settings


def test_operator_actions_are_audited_with_actor_and_outcome(
    tmp_path: Path, security_keyring: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(state_dir=tmp_path / "s", database_url=f"sqlite:///{tmp_path / 'c.db'}",
                              keys_dir=security_keyring, audit_log_file=tmp_path / "audit" / "audit.log"))
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    try:
        with TestClient(app) as client:
            with app.state.ctx.session_factory() as session:
                _, admin = create_api_token(session, name="alice", role="admin")
                session.commit()
            auth = {"Authorization": f"Bearer {admin}"}
            created = client.post("/api/v1/enrollment-tokens", json={"note": "line 3"}, headers=auth)
            assert created.status_code == 201
            assert client.get("/api/v1/devices", headers=auth).status_code == 200  # a read: not audited
            assert client.post("/api/v1/tokens", json={"name": "x", "role": "admin"}).status_code == 401
            assert client.delete("/api/v1/tokens/999", headers=auth).status_code == 404
    finally:
        for handler in list(logging.getLogger(AUDIT_LOGGER).handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(str(tmp_path)):
                logging.getLogger(AUDIT_LOGGER).removeHandler(handler)
                handler.close()

    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("POST", "/api/v1/enrollment-tokens", 201),
        ("POST", "/api/v1/tokens", 401),
        ("DELETE", "/api/v1/tokens/999", 404),
    ]
    assert records[0]["actor"] == admin[:10] and records[1]["actor"] == "anonymous"
    text = (tmp_path / "audit" / "audit.log").read_text()
    assert len(text.splitlines()) == 3
    assert admin not in text and created.json()["token"] not in text
    assert stat.S_IMODE((tmp_path / "audit" / "audit.log").stat().st_mode) == 0o600
