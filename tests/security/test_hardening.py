"""Secrets stay out of logs; key files and default secrets are checked before the controller starts."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

from controller.security.errors import DefaultSecretRefused, InsecureKeyFile
from controller.security.redact import RedactingFilter, install_redaction, redact
from controller.security.startup import check_default_secrets, check_key_files, run_startup_checks
from controller.settings import Settings

SECRETS = {
    "operator token": "efo_" + "Q" * 43,
    "enrollment token": "efe_" + "z9" * 20,
    "s3 signature": "http://s3:8333/b/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIAXYZ%2F2026&X-Amz-Signature=abcdef0123",
    "own presign": "http://c/artifacts/samples/x.npz?expires=1790000000&signature=deadbeefcafe",
    "bearer": "Authorization: Bearer some.jwt-ish.value",
    "basic": "Authorization: Basic ZGV2LWE6c2VjcmV0",
    "password pair": "mqtt password=Sup3rS3cret! for dev-a",
    "json secret": '{"s3_secret_key": "wJalrXUtnFEMI"}',
    "private key": "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----",
    "mosquitto hash": "$7$101$c2FsdHNhbHQ=$ZGlnZXN0ZGlnZXN0",
    "url userinfo": "postgresql+psycopg://edgefleet:hunter2@db:5432/edgefleet",
}
NEEDLES = {
    "operator token": "QQQQQQQQ", "enrollment token": "z9z9z9z9", "s3 signature": "abcdef0123",
    "own presign": "deadbeefcafe", "bearer": "jwt-ish", "basic": "ZGV2LWE6", "password pair": "Sup3rS3cret",
    "json secret": "wJalrXUtnFEMI", "private key": "MIGHAgEAMBMG", "mosquitto hash": "ZGlnZXN0",
    "url userinfo": "hunter2",
}


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_redact_removes_each_kind_of_secret(name: str) -> None:
    cleaned = redact(f"before {SECRETS[name]} after")
    assert NEEDLES[name] not in cleaned
    assert "[REDACTED" in cleaned and cleaned.startswith("before ")


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "device dev-a3f committed model digits 1.2.0 (variant ort-fp32) in 12.5 ms; GET /api/v1/devices?limit=50"
    assert redact(text) == text


def test_filter_covers_arguments_exceptions_and_uvicorn_style_records() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("edgefleet.test.redaction")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    install_redaction([logger.name])
    install_redaction([logger.name])  # idempotent: one filter per handler
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    try:
        logger.warning("upload to %s with token %s", SECRETS["s3 signature"], SECRETS["operator token"])
        try:
            raise RuntimeError(f"enroll failed for {SECRETS['enrollment token']}")
        except RuntimeError:
            logger.exception("boom")
        # uvicorn's access formatter unpacks record.args itself: they must stay a 5-tuple
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                   ("127.0.0.1:5", "GET", "/artifacts/x?expires=1&signature=abc123def", "1.1", 200),
                                   None)
        RedactingFilter().filter(record)
        assert isinstance(record.args, tuple) and len(record.args) == 5 and record.args[4] == 200
        assert "abc123def" not in record.getMessage()
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    for needle in ("abcdef0123", "QQQQQQQQ", "z9z9z9z9"):
        assert needle not in out, out
    assert "RuntimeError" in out  # the record itself is kept


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(state_dir=tmp_path / "state", **overrides)  # type: ignore[arg-type]


def test_default_secrets_refused_outside_development_mode(tmp_path: Path) -> None:
    bad = _settings(tmp_path, s3_access_key="minioadmin", s3_secret_key="minioadmin",
                    database_url="postgresql+psycopg://edgefleet:postgres@db/edgefleet")
    with pytest.raises(DefaultSecretRefused) as e:
        check_default_secrets(bad, development_mode=False)
    assert len(e.value.problems) == 4 and "s3_secret_key" in str(e.value)
    assert "minioadmin" not in str(e.value)  # the message names settings, never values
    check_default_secrets(bad, development_mode=True)
    good = _settings(tmp_path, s3_access_key="AKIA4EXAMPLEKEY", s3_secret_key="n0t-a-default-0f9a8b7c")
    check_default_secrets(good, development_mode=False)


def test_key_files_readable_by_others_are_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ca_key = settings.state_dir / "ca" / "ca.key"
    private = settings.state_dir / "keys" / "private" / "abc.pem"
    for path in (ca_key, private):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"secret")
        path.chmod(0o600)
    (settings.state_dir / "ca" / "ca.crt").write_bytes(b"public")
    (settings.state_dir / "ca" / "ca.crt").chmod(0o644)
    assert set(check_key_files(settings)) == {ca_key, private}

    private.chmod(0o640)
    ca_key.chmod(0o604)
    with pytest.raises(InsecureKeyFile) as e:
        run_startup_checks(settings)
    assert len(e.value.problems) == 2 and "0640" in str(e.value) and "chmod 600" in str(e.value)


def test_key_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    key = settings.state_dir / "presign.key"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"k")
    key.chmod(0o600)
    from controller.security.files import check_secret_files

    with pytest.raises(InsecureKeyFile, match="owned by uid"):
        check_secret_files([], [key], uid=os.geteuid() + 1)


def test_the_controller_refuses_to_start_with_default_secrets_or_open_keys(tmp_path: Path) -> None:
    from controller.app import create_app
    from controller.security.errors import SecurityError

    db = f"sqlite:///{tmp_path / 'c.db'}"
    with pytest.raises(DefaultSecretRefused):
        create_app(_settings(tmp_path, database_url=db, s3_access_key="minioadmin", s3_secret_key="minioadmin"))
    create_app(_settings(tmp_path, database_url=db, s3_access_key="minioadmin", s3_secret_key="minioadmin",
                         development_mode=True))
    (tmp_path / "state" / "ca" / "ca.key").chmod(0o644)
    with pytest.raises(SecurityError, match="ca.key has mode 0644"):
        create_app(_settings(tmp_path, database_url=db, development_mode=True))
