"""A controller app (device routes included) and devices enrolled through the real API."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from agent.enroll import build_csr
from controller.app import create_app
from controller.auth import create_api_token
from controller.settings import Settings
from manifests.keyring import Keyring


@dataclass
class Enrolled:
    device_id: str
    password: str
    certificate_pem: str
    key: ec.EllipticCurvePrivateKey

    def basic(self, password: str | None = None, device_id: str | None = None) -> dict[str, str]:
        raw = f"{device_id or self.device_id}:{password or self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@dataclass
class SecuredController:
    client: TestClient
    admin: dict[str, str]
    viewer: dict[str, str]

    def enroll(self, device_id: str) -> Enrolled:
        r = self.client.post("/api/v1/enrollment-tokens", json={}, headers=self.admin)
        assert r.status_code == 201, r.text
        key = ec.generate_private_key(ec.SECP256R1())
        r = self.client.post("/api/v1/enroll", json={
            "token": r.json()["token"], "csr": build_csr(key, device_id), "hardware_class": "x86_64",
            "device_id": device_id,
        })
        assert r.status_code == 201, r.text
        body = r.json()
        return Enrolled(body["device_id"], body["mqtt"]["password"], body["certificate"], key)


@pytest.fixture(scope="session")
def security_keyring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("security-keyring") / "keys"
    Keyring.create(path)
    return path


def _start(tmp_path: Path, keys: Path, trust_proxy_certificate: bool) -> Iterator[SecuredController]:
    settings = Settings(state_dir=tmp_path / "state", database_url=f"sqlite:///{tmp_path / 'c.db'}", keys_dir=keys,
                        trust_proxy_client_certificate=trust_proxy_certificate)
    app = create_app(settings)
    with TestClient(app) as client:
        tokens: dict[str, Any] = {}
        with app.state.ctx.session_factory() as session:
            for role in ("admin", "viewer"):
                _, tokens[role] = create_api_token(session, name=f"t-{role}", role=role)
            session.commit()
        yield SecuredController(client, {"Authorization": f"Bearer {tokens['admin']}"},
                                {"Authorization": f"Bearer {tokens['viewer']}"})


@pytest.fixture
def secured(tmp_path: Path, security_keyring: Path) -> Iterator[SecuredController]:
    yield from _start(tmp_path, security_keyring, trust_proxy_certificate=False)


@pytest.fixture
def secured_behind_proxy(tmp_path: Path, security_keyring: Path) -> Iterator[SecuredController]:
    yield from _start(tmp_path, security_keyring, trust_proxy_certificate=True)
