"""The controller API takes a device's credential on device routes only, never on operator routes."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.routing import APIRoute, iter_route_contexts

from controller.enrollment.ca import FleetCA
from tests.security.conftest import SecuredController

DEVICE_PREFIX = "/api/v1/device/"
PUBLIC = {("GET", "/healthz"), ("POST", "/api/v1/enroll")}


def _operator_routes(client: object) -> list[tuple[str, str]]:
    out = []
    for context in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        path = context.path
        if not isinstance(context.route, APIRoute) or path.startswith((DEVICE_PREFIX, "/artifacts")):
            continue
        for method in sorted(context.methods or ()):
            if (method, path) not in PUBLIC:
                out.append((method, re.sub(r"\{[^}]+\}", "x1", path)))
    return out


def test_device_token_opens_device_routes(secured: SecuredController) -> None:
    dev = secured.enroll("dev-token-1")
    r = secured.client.get("/api/v1/device/self", headers=dev.basic())
    assert r.status_code == 200, r.text
    assert r.json()["device_id"] == "dev-token-1"
    assert r.json()["authenticated_by"] == "token"


def test_device_token_is_refused_on_every_operator_route(secured: SecuredController) -> None:
    dev = secured.enroll("dev-token-2")
    routes = _operator_routes(secured.client)
    assert ("GET", "/api/v1/devices") in routes and ("POST", "/api/v1/tokens") in routes
    for method, path in routes:
        for headers in (dev.basic(), {"Authorization": f"Bearer {dev.password}"}):
            r = secured.client.request(method, path, headers=headers)
            assert r.status_code == 401, f"{method} {path} answered {r.status_code} to a device credential"


def test_operator_tokens_and_wrong_secrets_are_refused_on_device_routes(secured: SecuredController) -> None:
    a, b = secured.enroll("dev-aaaa"), secured.enroll("dev-bbbb")
    for headers in (
        secured.admin,
        {},
        a.basic(password="not-the-password"),
        a.basic(device_id="dev-bbbb"),  # A's secret, B's id
        {"Authorization": "Basic !!!not-base64"},
    ):
        r = secured.client.get("/api/v1/device/self", headers=headers)
        assert r.status_code == 401, f"{headers} answered {r.status_code}"
    assert secured.client.get("/api/v1/device/self", headers=b.basic()).json()["device_id"] == "dev-bbbb"


def test_revocation_ends_the_device_token(secured: SecuredController) -> None:
    dev = secured.enroll("dev-revoked")
    assert secured.client.get("/api/v1/device/self", headers=dev.basic()).status_code == 200
    r = secured.client.post(f"/api/v1/devices/{dev.device_id}/revoke", json={"reason": "stolen"},
                            headers=secured.admin)
    assert r.status_code == 200, r.text
    assert secured.client.get("/api/v1/device/self", headers=dev.basic()).status_code == 401


def _cert_header(pem: str) -> dict[str, str]:
    return {"X-Client-Certificate": urllib.parse.quote(pem)}


def test_proxied_certificate_is_honoured_only_when_configured(
    secured: SecuredController, secured_behind_proxy: SecuredController
) -> None:
    dev = secured.enroll("dev-cert-1")
    assert secured.client.get("/api/v1/device/self", headers=_cert_header(dev.certificate_pem)).status_code == 401

    proxied = secured_behind_proxy.enroll("dev-cert-2")
    r = secured_behind_proxy.client.get("/api/v1/device/self", headers=_cert_header(proxied.certificate_pem))
    assert r.status_code == 200, r.text
    assert r.json() == {**r.json(), "device_id": "dev-cert-2", "authenticated_by": "certificate"}
    # ...and a certificate is still no key to operator routes.
    for method, path in _operator_routes(secured_behind_proxy.client):
        got = secured_behind_proxy.client.request(method, path, headers=_cert_header(proxied.certificate_pem))
        assert got.status_code == 401, f"{method} {path} answered {got.status_code} to a device certificate"


def test_proxied_certificate_from_another_ca_or_revoked_is_refused(
    secured_behind_proxy: SecuredController, tmp_path: Path
) -> None:
    c = secured_behind_proxy
    dev = c.enroll("dev-cert-3")
    rogue = FleetCA.load_or_create(tmp_path / "rogue", common_name="edgefleet fleet CA")
    forged = rogue.issue("dev-cert-3", ec.generate_private_key(ec.SECP256R1()).public_key(), validity_days=5)
    assert c.client.get("/api/v1/device/self", headers=_cert_header(forged.pem)).status_code == 401
    assert c.client.get("/api/v1/device/self", headers=_cert_header("garbage")).status_code == 401
    assert c.client.get("/api/v1/device/self", headers=_cert_header(dev.certificate_pem)).status_code == 200
    c.client.post(f"/api/v1/devices/{dev.device_id}/revoke", json={"reason": "x"}, headers=c.admin)
    assert c.client.get("/api/v1/device/self", headers=_cert_header(dev.certificate_pem)).status_code == 401
