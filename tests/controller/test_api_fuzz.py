"""Bad input never gets a 500: every operation of the controller's OpenAPI, fuzzed by schemathesis.

The app is the real one (`create_app`) on SQLite in a temporary folder and on PostgreSQL, with its
lifespan running (migrations, build worker, repository refresher, MQTT bridge to a real Mosquitto,
rollout engine), so the rollout routes answer instead of their "no engine" 503. Each operation gets a bounded number of
generated requests, authenticated as admin (the `/api/v1/device/` routes as an enrolled device), and
each answer must:

- not be a 5xx,
- conform to the schema (status documented, body matching its model, content type),
- if it is an error, be in the one error format `{"error": {"code", "message", "details"}}`.

Excluded, with reasons:

- `POST /api/v1/models`: a valid upload starts a real variant build (compiler, benchmark, accuracy);
  its validation is covered by tests/controller/test_models_api.py and tests/controller/build/.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from controller.api.pagination import MAX_OFFSET
from controller.app import create_app
from controller.auth import create_api_token
from controller.settings import Settings
from manifests.keyring import Keyring
from tests.controller.conftest import ControllerEnv, new_pg_database
from tests.services import Mosquitto

EXCLUDED = {("POST", "/api/v1/models")}
FUZZED = {
    ("GET", "/healthz"),
    ("POST", "/api/v1/tokens"),
    ("GET", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{token_id}"),
    ("POST", "/api/v1/enrollment-tokens"),
    ("POST", "/api/v1/device/certificate/renew"),
    ("GET", "/api/v1/enrollment-tokens"),
    ("DELETE", "/api/v1/enrollment-tokens/{token_id}"),
    ("POST", "/api/v1/enroll"),
    ("GET", "/api/v1/ca/certificate"),
    ("GET", "/api/v1/ca/crl"),
    ("GET", "/api/v1/broker/password-file"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/{device_id}"),
    ("PATCH", "/api/v1/devices/{device_id}"),
    ("GET", "/api/v1/devices/{device_id}/history"),
    ("GET", "/api/v1/devices/{device_id}/capture"),
    ("POST", "/api/v1/devices/{device_id}/revoke"),
    ("GET", "/api/v1/models"),
    ("GET", "/api/v1/models/{name}/{version}"),
    ("DELETE", "/api/v1/models/{name}/{version}"),
    ("PUT", "/api/v1/models/{name}/release-floor"),
    ("GET", "/api/v1/repository/targets/pending"),
    ("PUT", "/api/v1/repository/targets"),
    ("GET", "/api/v1/telemetry/devices/{device_id}/latency"),
    ("GET", "/api/v1/telemetry/latency"),
    ("GET", "/api/v1/telemetry/compare"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/device/samples/uploads"),
    ("POST", "/api/v1/device/samples/complete"),
    ("GET", "/api/v1/samples"),
    ("POST", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts/{rollout_id}"),
    ("GET", "/api/v1/rollouts/{rollout_id}/history"),
    ("POST", "/api/v1/rollouts/{rollout_id}/{action}"),
    ("GET", "/api/v1/device/self"),
    ("GET", "/artifacts/{key}"),
    ("PUT", "/artifacts/{key}"),
}
#: Per operation; small enough that the file runs in well under a minute on two loaded cores.
MAX_EXAMPLES = 25
BASE_URL = "http://testserver"
FUZZ_DEVICE_ID = "fuzz-dev-1"
#: Path parameters that name objects the fixture created, used for a share of the valid requests.
KNOWN_PATH_VALUES = {"device_id": FUZZ_DEVICE_ID}
#: The checks that judge one answer; those that send more requests of their own (ignored auth, stateful
#: links) would go around the app's lifespan and are left out, and so is the rejection of unknown query
#: parameters, which the API ignores by design.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@dataclass
class FuzzTarget:
    client: TestClient
    app: Any
    admin_token: str = ""
    admin_token_id: int = 0
    device_auth: str = ""

    def mint_admin(self) -> None:
        with self.app.state.ctx.session_factory() as session:
            row, self.admin_token = create_api_token(session, name="fuzz-admin", role="admin")
            session.commit()
            self.admin_token_id = row.id


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path_factory.mktemp("api-fuzz-mosquitto"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto
) -> Iterator[FuzzTarget]:
    """The app on SQLite and on PostgreSQL: only the latter enforces column lengths, integer widths and
    refuses NUL characters in text, so each database finds its own 500s."""
    root = tmp_path_factory.mktemp("api-fuzz")
    if request.param == "sqlite":
        database_url = f"sqlite:///{root / 'controller.db'}"
    else:
        database_url = new_pg_database(request.getfixturevalue("pg_server"))
    state = root / "state"
    Keyring.create(state / "keys")
    app = create_app(
        Settings(
            state_dir=state,
            database_url=database_url,
            mqtt_bridge=True,
            mqtt_host="127.0.0.1",
            mqtt_port=broker.port,
            development_mode=True,
        )
    )
    with TestClient(app, base_url=BASE_URL, raise_server_exceptions=False) as client:
        target = FuzzTarget(client=client, app=app)
        target.mint_admin()
        _enroll(client, target.admin_token, FUZZ_DEVICE_ID)
        target.device_auth = _enroll(client, target.admin_token, "fuzz-dev-self")
        yield target


def _enroll(client: TestClient, admin_token: str, device_id: str) -> str:
    """A real enrolled device, so that `{device_id}` routes reach their handlers, not only their 404;
    returns its `Authorization` value for the device routes."""
    auth = {"Authorization": f"Bearer {admin_token}"}
    token = client.post("/api/v1/enrollment-tokens", json={"tags": ["fuzz"]}, headers=auth).json()["token"]
    public_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    response = client.post("/api/v1/enroll", json={
        "token": token, "public_key": public_pem, "hardware_class": "x86_64-cpu", "device_id": device_id,
    })
    assert response.status_code == 201, response.text
    password = response.json()["mqtt"]["password"]
    return "Basic " + base64.b64encode(f"{device_id}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def api_schema(fuzz_target: FuzzTarget) -> Any:
    return schemathesis.openapi.from_dict(fuzz_target.app.openapi())


def _send(client: TestClient, kwargs: dict[str, Any]) -> httpx.Response:
    """The requests-style keyword arguments schemathesis serializes, sent through httpx."""
    request: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": kwargs.get("headers") or {},
        "params": kwargs.get("params") or None,
    }
    if kwargs.get("cookies"):
        client.cookies.clear()
        request["cookies"] = kwargs["cookies"]
    if "json" in kwargs:
        request["json"] = kwargs["json"]
    if "data" in kwargs:
        data = kwargs["data"]
        if isinstance(data, (bytes, str)):
            request["content"] = data
        else:
            request["data"] = data
    if "files" in kwargs:
        request["files"] = kwargs["files"]
    return client.request(**request)


def _check_error_format(response: httpx.Response) -> None:
    assert response.headers.get("content-type", "").startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["details"], dict), body


def _operation(schema: Any, method: str, path: str) -> Any:
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() == method and operation.path == path:
            return operation
    raise AssertionError(f"{method} {path} is not in the app's OpenAPI")


def _cases(operation: Any) -> st.SearchStrategy[Any]:
    """Valid requests (reach the handlers) and invalid ones (reach validation and the error format)."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    known = {p.name: KNOWN_PATH_VALUES[p.name] for p in operation.path_parameters if p.name in KNOWN_PATH_VALUES}
    if known:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known))
    if operation.path_parameters or operation.query or operation.body:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(strategies)


def _params() -> list[Any]:
    return [pytest.param(method, path, id=f"{method} {path}") for method, path in sorted(FUZZED)]


@pytest.mark.parametrize(("method", "path"), _params())
def test_no_server_errors_and_one_error_format(
    method: str, path: str, api_schema: Any, fuzz_target: FuzzTarget
) -> None:
    operation = _operation(api_schema, method, path)

    @given(case=_cases(operation))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        _call_and_check(case, fuzz_target)

    check()


def _call_and_check(case: Any, fuzz_target: FuzzTarget) -> None:
    if case.path.startswith("/api/v1/device/"):
        # Device routes take the device's own credential; the operator token would only ever reach a 401.
        headers = {"Authorization": fuzz_target.device_auth}
    else:
        headers = {"Authorization": f"Bearer {fuzz_target.admin_token}"}
    kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=headers)
    response = _send(fuzz_target.client, kwargs)
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        _check_error_format(response)
    if (
        case.method == "DELETE"
        and case.path == "/api/v1/tokens/{token_id}"
        and response.status_code == 200
        and response.json().get("id") == fuzz_target.admin_token_id
    ):
        # Revoking the caller's own token is allowed; the next cases need a live one.
        fuzz_target.mint_admin()
    case.validate_response(response, checks=CHECKS, headers=kwargs["headers"])


def test_the_fixture_credentials_reach_the_handlers(fuzz_target: FuzzTarget) -> None:
    """Guards the fuzzing against spending every case on a 401 or on an unknown device."""
    device = fuzz_target.client.get("/api/v1/device/self", headers={"Authorization": fuzz_target.device_auth})
    assert device.status_code == 200, device.text
    known = fuzz_target.client.get(f"/api/v1/devices/{FUZZ_DEVICE_ID}",
                                   headers={"Authorization": f"Bearer {fuzz_target.admin_token}"})
    assert known.status_code == 200, known.text


def test_every_operation_is_fuzzed_or_excluded_with_a_reason(tmp_path: Path) -> None:
    """A route added to the app must be added to FUZZED (or to EXCLUDED, with its reason above)."""
    Keyring.create(tmp_path / "state" / "keys")
    app = create_app(Settings(state_dir=tmp_path / "state", database_url=f"sqlite:///{tmp_path / 'c.db'}",
                              development_mode=True))
    operations = {
        (method.upper(), path)
        for path, ops in app.openapi()["paths"].items()
        for method in ops
    }
    assert operations == FUZZED | EXCLUDED, {
        "missing here": operations - FUZZED - EXCLUDED, "gone from the app": (FUZZED | EXCLUDED) - operations
    }


# --- regressions found by the fuzzer, on SQLite and PostgreSQL ------------------------------------------


def _assert_invalid(response: httpx.Response, where: str) -> None:
    assert response.status_code == 422, response.text
    _check_error_format(response)
    assert where in response.text


def test_an_offset_beyond_64_bits_is_refused(env: ControllerEnv) -> None:
    for path in ("/api/v1/models", "/api/v1/devices", "/api/v1/tokens"):
        response = env.client.get(path, params={"offset": 2**64}, headers=env.auth("admin"))
        _assert_invalid(response, "offset")
    response = env.client.get("/api/v1/models", params={"offset": MAX_OFFSET}, headers=env.auth("admin"))
    assert response.status_code == 200, response.text


def test_a_row_id_beyond_the_id_column_is_refused(env: ControllerEnv) -> None:
    for path in ("/api/v1/tokens", "/api/v1/enrollment-tokens"):
        for too_big in (2**31, 2**64):
            _assert_invalid(env.client.delete(f"{path}/{too_big}", headers=env.auth("admin")), "token_id")
        response = env.client.delete(f"{path}/{2**31 - 1}", headers=env.auth("admin"))
        assert response.status_code == 404, response.text
        _check_error_format(response)


def test_a_token_lifetime_beyond_any_date_is_refused_and_nothing_is_written(env: ControllerEnv) -> None:
    before = env.client.get("/api/v1/tokens", headers=env.auth("admin")).json()["total"]
    response = env.client.post("/api/v1/tokens", json={"name": "x", "role": "viewer", "expires_in_s": 1e300},
                               headers=env.auth("admin"))
    _assert_invalid(response, "expires_in_s")
    assert env.client.get("/api/v1/tokens", headers=env.auth("admin")).json()["total"] == before


def test_a_body_that_is_not_utf8_is_an_invalid_request(env: ControllerEnv) -> None:
    headers = {**env.auth("admin"), "Content-Type": "application/json"}
    for method, path in (("POST", "/api/v1/tokens"), ("PATCH", "/api/v1/devices/d1"),
                         ("POST", "/api/v1/devices/d1/revoke")):
        response = env.client.request(method, path, content=b"\xff\xfe{", headers=headers)
        _assert_invalid(response, "body")
        assert response.json()["error"]["code"] == "invalid_request"


def test_not_found_and_pem_answers_are_documented(env: ControllerEnv) -> None:
    paths = env.client.get("/openapi.json").json()["paths"]
    for path, method in (("/api/v1/devices/{device_id}", "get"), ("/api/v1/models/{name}/{version}", "delete"),
                         ("/api/v1/rollouts/{rollout_id}", "get"), ("/api/v1/tokens/{token_id}", "delete")):
        assert "404" in paths[path][method]["responses"], (method, path)
    assert "401" in paths["/api/v1/device/self"]["get"]["responses"]
    pem = paths["/api/v1/ca/certificate"]["get"]["responses"]["200"]["content"]
    assert "application/x-pem-file" in pem


def test_text_the_database_refuses_is_an_invalid_request_and_nothing_is_written(env: ControllerEnv) -> None:
    """PostgreSQL refuses NUL characters in text; SQLite stores them. Either way: no 500, nothing half-done."""
    admin = env.auth("admin")
    before = env.client.get("/api/v1/tokens", headers=admin).json()["total"]
    response = env.client.post("/api/v1/tokens", json={"name": "a\u0000b", "role": "viewer"}, headers=admin)
    assert response.status_code in (201, 422), response.text
    after = env.client.get("/api/v1/tokens", headers=admin).json()["total"]
    if response.status_code == 422:
        _check_error_format(response)
        assert "database" in response.json()["error"]["message"]
        assert after == before
    else:
        assert after == before + 1
    for path in ("/api/v1/devices", "/api/v1/telemetry/latency"):
        response = env.client.get(path, params={"model": "m\x00"}, headers=admin)
        assert response.status_code in (200, 422), response.text
        if response.status_code == 422:
            _check_error_format(response)
