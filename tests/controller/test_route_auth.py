"""Every route refuses a missing, unknown, revoked or under-privileged token.

The test walks the app's route table, so a route added later without a role requirement fails here.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts

from controller.auth import RequireRole, Role
from tests.controller.conftest import ControllerEnv

PUBLIC = {("GET", "/healthz"), ("POST", "/api/v1/enroll")}
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
ROLES = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]


def _requirements(dependant: Any) -> list[Role]:
    found = []
    for dep in dependant.dependencies:
        if isinstance(dep.call, RequireRole):
            found.append(dep.call.role)
        found.extend(_requirements(dep))
    return found


def _api_routes(app: Any) -> list[tuple[str, str, APIRoute]]:
    out = []
    for context in iter_route_contexts(app.routes):
        route = context.route
        if context.path in DOCS or not isinstance(route, APIRoute):
            continue
        for method in sorted(context.methods or ()):
            out.append((method, context.path, route))
    return out


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_route_table_is_what_this_test_expects(env: ControllerEnv) -> None:
    paths = {p for _, p, _ in _api_routes(env.client.app)}
    # Sanity: the walk sees the routers (an empty walk would make the test below vacuous).
    assert {"/api/v1/devices", "/api/v1/models", "/api/v1/tokens", "/api/v1/enroll"} <= paths


def test_every_api_route_needs_exactly_one_role(env: ControllerEnv) -> None:
    for method, path, route in _api_routes(env.client.app):
        roles = _requirements(route.dependant)
        if (method, path) in PUBLIC or path.startswith(("/artifacts/", "/api/v1/device/")):
            assert roles == [], f"{method} {path} is public and must not ask for a role"
        else:
            assert len(roles) == 1, f"{method} {path} declares roles {roles}; expected exactly one"


def test_routes_refuse_missing_bad_and_weak_tokens(env: ControllerEnv) -> None:
    client = env.client
    checked = 0
    for method, path, route in _api_routes(client.app):
        if (method, path) in PUBLIC or path.startswith(("/artifacts/", "/api/v1/device/")):
            continue
        (needed,) = _requirements(route.dependant)
        url = _concrete(path)
        r = client.request(method, url)
        assert r.status_code == 401, f"{method} {path} without a token answered {r.status_code}"
        assert r.json()["error"]["code"] == "unauthenticated"
        r = client.request(method, url, headers={"Authorization": "Bearer efo_not-a-real-token"})
        assert r.status_code == 401, f"{method} {path} with an unknown token answered {r.status_code}"
        for role in ROLES:
            r = client.request(method, url, headers=env.auth(role.value))
            if role.allows(needed):
                assert r.status_code not in (401, 403), f"{method} {path} refused {role.value}: {r.text}"
            else:
                assert r.status_code == 403, f"{method} {path} let {role.value} through ({r.status_code})"
                assert r.json()["error"]["code"] == "forbidden"
        checked += 1
    assert checked >= 15


def test_revoked_and_expired_tokens_are_refused(env: ControllerEnv) -> None:
    client = env.client
    r = client.post("/api/v1/tokens", json={"name": "short", "role": "viewer"}, headers=env.auth("admin"))
    assert r.status_code == 201, r.text
    created = r.json()
    bearer = {"Authorization": f"Bearer {created['token']}"}
    assert client.get("/api/v1/devices", headers=bearer).status_code == 200
    assert client.delete(f"/api/v1/tokens/{created['id']}", headers=env.auth("admin")).status_code == 200
    assert client.get("/api/v1/devices", headers=bearer).status_code == 401

    from datetime import timedelta

    from controller.db.base import utcnow
    from controller.db.models import ApiToken

    r = client.post("/api/v1/tokens", json={"name": "old", "role": "admin", "expires_in_s": 3600},
                    headers=env.auth("admin"))
    expired = r.json()
    with env.ctx.session_factory() as session:
        row = session.get(ApiToken, expired["id"])
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    r = client.get("/api/v1/devices", headers={"Authorization": f"Bearer {expired['token']}"})
    assert r.status_code == 401


def test_tokens_are_stored_hashed_and_listed_without_secrets(env: ControllerEnv) -> None:
    client = env.client
    r = client.post("/api/v1/tokens", json={"name": "ci", "role": "operator"}, headers=env.auth("admin"))
    secret = r.json()["token"]
    listing = client.get("/api/v1/tokens", headers=env.auth("admin")).text
    assert secret not in listing
    from sqlalchemy import select

    from controller.db.models import ApiToken

    with env.ctx.session_factory() as session:
        stored = [t.token_hash for t in session.scalars(select(ApiToken))]
    assert secret not in stored and all(len(h) == 64 for h in stored)


def test_artifact_routes_need_a_signature_outside_the_public_repository(env: ControllerEnv) -> None:
    client = env.client
    env.ctx.store.write_bytes("uploads/private/model.onnx", b"secret bytes")
    assert client.get("/artifacts/uploads/private/model.onnx").status_code == 403
    assert client.put("/artifacts/uploads/private/other", content=b"x").status_code == 403
    signed = env.ctx.store.presign_get("uploads/private/model.onnx", expires_s=60)
    assert client.get(signed.split("127.0.0.1:8080", 1)[1]).content == b"secret bytes"


def test_healthz_is_public(env: ControllerEnv) -> None:
    r = env.client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_openapi_documents_auth_errors_and_examples(env: ControllerEnv) -> None:
    spec = env.client.get("/openapi.json").json()
    assert "ErrorResponse" in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    devices = spec["paths"]["/api/v1/devices"]["get"]
    assert {"401", "403"} <= set(devices["responses"]) and devices["security"]
    enroll = spec["paths"]["/api/v1/enroll"]["post"]
    assert "security" not in enroll
    assert enroll["requestBody"]["content"]["application/json"]["schema"]["examples"]
    assert spec["components"]["schemas"]["TokenCreate"]["examples"]
