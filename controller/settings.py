"""Controller settings: defaults, then a TOML file, then `EDGEFLEET_*` environment variables.

Settings are built once at start-up (`Settings.load()`) and handed to `create_app(settings)`; nothing
in the controller reads the environment at import time, so tests build their own `Settings(...)` and
several apps can live in one process.

Every URL has an embedded default so a lab controller needs no configuration at all: SQLite in the
state folder, a local artifact folder, the fleet CA and signing keys beside it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

CONFIG_ENV = "EDGEFLEET_CONFIG"
DEFAULT_STATE_DIR = Path("edgefleet-state")


class Settings(BaseSettings):
    """What a controller replica needs to run; see the package README for the file format."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="forbid", frozen=True)

    state_dir: Path = Field(DEFAULT_STATE_DIR, description="Folder for SQLite, local artifacts, CA, keys.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite in state_dir.")
    migrate_on_start: bool = Field(True, description="Run Alembic upgrades when the app starts.")
    artifact_url: str = Field(
        "", description="file:///path or s3://bucket/prefix; empty: state_dir/artifacts."
    )
    s3_endpoint_url: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    keys_dir: Path | None = Field(
        None, description="Signing keys (`edgefleet keys init`); default state_dir/keys."
    )
    ca_dir: Path | None = Field(None, description="Fleet CA key and certificate; default state_dir/ca.")
    public_url: str = Field("http://127.0.0.1:8080", description="Base URL devices use to reach this API.")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)

    mqtt_host: str = Field("127.0.0.1", description="Broker host handed to devices at enrollment.")
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_tls: bool = False
    mqtt_bridge: bool = Field(False, description="Connect to the broker and apply device reports.")
    mqtt_bridge_host: str | None = Field(
        None, description="Where the bridge connects when not the device-facing address (a loopback listener)."
    )
    mqtt_bridge_port: int | None = Field(None, ge=1, le=65535)
    mqtt_bridge_username: str | None = None
    mqtt_bridge_password: str | None = None
    device_offline_after_s: float = Field(
        90.0, description="Mark a device offline after this long without any message from it (3 x the agent's "
        "default telemetry_batch_every_s of 30 s); 0 turns the sweep off (agents without telemetry).",
    )

    device_cert_validity_days: int = Field(365, ge=1, le=3650)
    enrollment_token_ttl_s: int = Field(24 * 3600, ge=60)
    enrollment_rate_per_minute: float = Field(30.0, gt=0, description="Enrollment attempts per client.")
    enrollment_burst: int = Field(10, ge=1)
    renewal_rate_per_minute: float = Field(2.0, gt=0, description="Certificate renewals per device.")
    renewal_burst: int = Field(3, ge=1)
    development_mode: bool = Field(
        False, description="Lab/demo mode: well-known default secrets are allowed (never in production)."
    )
    audit_log_file: Path | None = Field(None, description="Also append the operator audit trail to this file.")
    trust_proxy_client_certificate: bool = Field(
        False, description="Device routes accept X-Client-Certificate from a TLS proxy that verified it."
    )

    max_model_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    max_golden_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    build_workers: int = Field(1, ge=1, le=8)
    build_variants: tuple[str, ...] = Field(
        ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-fp16", "tensorrt-fp16"),
        description="Variants built for every release (e.g. drop OpenVINO for a Jetson-only fleet).",
    )
    build_latency_runs: int = Field(30, ge=1, le=10_000, description="Timed runs per variant at build time.")

    @field_validator("build_variants")
    @classmethod
    def _known_variants(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-fp16", "tensorrt-fp16")
        unknown = [v for v in value if v not in known]
        if unknown or not value:
            raise ValueError(f"build_variants must be a non-empty subset of {known}; unknown: {unknown}")
        return value

    @field_validator("device_offline_after_s")
    @classmethod
    def _offline_after(cls, value: float) -> float:
        if value != 0 and not 10.0 <= value <= 7 * 24 * 3600:
            raise ValueError(f"device_offline_after_s must be 0 (off) or 10..604800 seconds, got {value}")
        return value

    @field_validator("database_url", "artifact_url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build settings: overrides, then `EDGEFLEET_*` variables, then the TOML file, then defaults.

        The file is `config_file`, else `$EDGEFLEET_CONFIG` when set; a named file that is missing is an
        error rather than a silent fall-back to defaults.
        """
        path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
        if path is None:
            return cls(**overrides)
        if not path.is_file():
            raise FileNotFoundError(f"controller config file {path} does not exist")
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"controller config file {path} is not valid TOML: {e}") from e

        class _WithFile(cls):  # type: ignore[valid-type,misc]
            @classmethod
            def settings_customise_sources(
                cls,
                settings_cls: type[BaseSettings],
                init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
            ) -> tuple[PydanticBaseSettingsSource, ...]:
                return (init_settings, env_settings, InitSettingsSource(settings_cls, file_values))

        merged = _WithFile(**overrides)
        return cls.model_validate(merged.model_dump())

    # Derived locations: one place decides where things live.

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'controller.db').resolve()}"

    @property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or (self.state_dir / "artifacts").resolve().as_uri()

    @property
    def resolved_keys_dir(self) -> Path:
        return self.keys_dir or self.state_dir / "keys"

    @property
    def resolved_ca_dir(self) -> Path:
        return self.ca_dir or self.state_dir / "ca"
