"""Start-up checks a production controller must pass: key file protection and no default secrets.

Development mode (`EDGEFLEET_DEVELOPMENT_MODE=1` or `development_mode = true`, the demo's setting)
downgrades the default-secret check to nothing, because a lab on a laptop uses throw-away values on
purpose; key file permissions are checked in every mode, since a world-readable CA key is never
intended.

Default secrets are the well-known values that ship in examples and container images (`minioadmin`,
`changeme`, …). They are matched case-insensitively against every secret-bearing setting, including
the password inside the database URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from controller.security.errors import DefaultSecretRefused
from controller.security.files import check_secret_files

KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "admin", "changeme", "change-me", "default", "edgefleet", "minioadmin", "password", "postgres",
        "root", "secret", "test", "guest", "mosquitto", "public", "12345678", "any",
    }
)
SECRET_SETTINGS = ("s3_access_key", "s3_secret_key", "mqtt_bridge_password")


def default_secret_problems(settings: Any) -> list[str]:
    """Settings holding a well-known default secret (empty when none)."""
    problems = []
    for name in SECRET_SETTINGS:
        value = getattr(settings, name, None)
        if isinstance(value, str) and value.strip().lower() in KNOWN_DEFAULT_SECRETS:
            problems.append(f"setting {name} holds a well-known default secret")
    url = getattr(settings, "database_url", "") or ""
    if url:
        try:
            password = make_url(url).password
        except ArgumentError:
            password = None
        if isinstance(password, str) and password.lower() in KNOWN_DEFAULT_SECRETS:
            problems.append("database_url carries a well-known default password")
    return problems


def check_default_secrets(settings: Any, *, development_mode: bool) -> None:
    problems = default_secret_problems(settings)
    if problems and not development_mode:
        raise DefaultSecretRefused(
            [*problems, "set real secrets, or start in development mode (EDGEFLEET_DEVELOPMENT_MODE=1)"]
        )


def check_key_files(settings: Any) -> list[Path]:
    """Every secret under the state, keys and CA folders must be 0600 and ours; returns what was checked."""
    state_dir = Path(settings.state_dir)
    folders = [state_dir / "ca", state_dir / "keys"]
    for name in ("resolved_ca_dir", "resolved_keys_dir"):
        folder = getattr(settings, name, None)
        if folder is not None:
            folders.append(Path(folder))
    return check_secret_files(dict.fromkeys(folders), [state_dir / "presign.key"])


def run_startup_checks(settings: Any) -> list[Path]:
    """Both checks; raises a SecurityError subclass naming every problem found."""
    check_default_secrets(settings, development_mode=bool(getattr(settings, "development_mode", False)))
    return check_key_files(settings)
