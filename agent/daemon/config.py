"""The daemon's configuration: one file per device (TOML or JSON), overridden by the environment.

Why hand-written checks and not pydantic: the agent runs on device images without it. Every key is
declared once in `FIELDS` with its type and default; the file may group keys in sections
(`[mqtt] host = ...` is the key `mqtt_host`), and `EDGEFLEET_AGENT_<KEY>` in the environment
(`EDGEFLEET_AGENT_MQTT_PASSWORD`) overrides the file, so secrets need not sit in it. Unknown keys,
wrong types and out-of-range values are refused with a `ConfigError` naming the key and what
arrived; nothing is silently ignored, because a typo in a fleet config is otherwise found in the field.

Keys that `edgefleet-agent enroll` recorded in `<state_dir>/identity/enrollment.json` (device id,
broker address, password file, TLS files) are defaults, so an enrolled device's config needs little
more than its state folder and the repository URLs.

Relative paths are resolved against the config file's folder, so a device folder can be moved whole.

| key                                | default      | meaning                                          |
|------------------------------------|--------------|--------------------------------------------------|
| device_id                          | (required)   | broker username and topic level                  |
| state_dir                          | (required)   | trust state, journal, models, outbox of this device |
| repository_metadata_url            | (required)   | image repository TUF metadata base URL           |
| repository_targets_url             | (required)   | base URL of target bytes (by store key)          |
| trust_director_root_file           |              | director root v1 JSON, pinned on first start     |
| trust_image_root_file              |              | image root v1 JSON, pinned on first start        |
| mqtt_host / mqtt_port              | 127.0.0.1 / 1883 | broker                                       |
| mqtt_password(_file), mqtt_ca_file, mqtt_cert_file, mqtt_key_file | | credentials / TLS          |
| server_host / server_port          | 127.0.0.1 / 8000 | local Open Inference Protocol endpoint       |
| server_unix_socket, server_serve_as|              | extra Unix socket; one fixed protocol model name |
| hardware_probe_root                | /            | filesystem root the hardware probe reads         |
| gate_timeout_s, gate_latency_rounds| 300 / 300    | the benchmark gate's child process               |
| trust_raise_floor_on_commit        | false        | raise the release-counter floor when a release commits |
| shutdown_grace_s                   | 10           | how long SIGTERM waits for a running update step |
| telemetry_enabled, _sample_every_s, _batch_every_s, _max_points | true / 10 / 30 / 2000 | metrics loop |
| controller_url                     | enrollment's `api_url` | controller base URL; sample uploads go there |
| capture_upload_every_s             | 60           | interval of sample upload rounds                 |
| capture_upload_max_backoff_s       | 900          | longest wait between rounds while uploads fail   |
| capture_spool_max_bytes            | 67108864     | disk bound of samples waiting for upload         |
| cert_renewal_check_every_s         | 86400        | how often to check the certificate (0: never)    |
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.daemon.errors import ConfigError

ENV_PREFIX = "EDGEFLEET_AGENT_"
MAX_CONFIG_BYTES = 256 * 1024
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

Value = str | int | float | bool | Path | None


@dataclass(frozen=True)
class DaemonConfig:
    device_id: str
    state_dir: Path
    repository_metadata_url: str
    repository_targets_url: str
    trust_director_root_file: Path | None = None
    trust_image_root_file: Path | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_password: str | None = None
    mqtt_password_file: Path | None = None
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_keepalive_s: int = 30
    mqtt_reconnect_max_s: float = 30.0
    server_host: str = "127.0.0.1"
    server_port: int = 8000
    server_unix_socket: Path | None = None
    server_serve_as: str | None = None
    server_threads: int | None = None
    server_workers: int | None = None
    server_max_batch_size: int = 32
    server_max_queue_delay_ms: float = 0.0
    hardware_probe_root: Path = Path("/")
    gate_timeout_s: float = 300.0
    gate_latency_rounds: int = 300
    # Downloads (`agent.staging.StagingConfig`): the same defaults; `nice` > 0 lets serving keep its CPU.
    staging_nice: int = 0
    staging_pin_threads: bool = True
    staging_deadline_s: float = 3600.0
    staging_min_speed_bytes_per_s: float = 16 * 1024
    staging_reserve_bytes: int = 64 * 1024 * 1024
    probation_poll_interval_s: float = 1.0
    trust_raise_floor_on_commit: bool = False
    telemetry_enabled: bool = True
    telemetry_sample_every_s: float = 10.0
    telemetry_batch_every_s: float = 30.0
    telemetry_max_points: int = 2000
    controller_url: str | None = None
    capture_upload_every_s: float = 60.0
    capture_upload_max_backoff_s: float = 900.0
    capture_spool_max_bytes: int = 64 * 1024 * 1024
    cert_renewal_check_every_s: float = 86400.0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"

    @property
    def trust_path(self) -> Path:
        return self.state_dir / "trust.json"

    @property
    def engine_root(self) -> Path:
        """The model disk: slots, pointers, staging and the update journal."""
        return self.state_dir / "update"

    @property
    def outbox_dir(self) -> Path:
        return self.state_dir / "outbox"

    @property
    def capture_dir(self) -> Path:
        """Captured samples waiting for upload."""
        return self.state_dir / "capture"

    @property
    def runtime_path(self) -> Path:
        """Written by the running daemon (pid, server URL) for `edgefleet-agent status`."""
        return self.state_dir / "daemon.json"

    def password(self) -> str | None:
        if self.mqtt_password is not None:
            return self.mqtt_password
        if self.mqtt_password_file is None:
            return None
        try:
            return self.mqtt_password_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"mqtt_password_file: cannot read {self.mqtt_password_file}: {e}") from e


# key -> (kind, required); kinds: str, int, float, path, url, bool. Defaults come from the dataclass.
FIELDS: Mapping[str, tuple[str, bool]] = {
    "device_id": ("str", True),
    "state_dir": ("path", True),
    "repository_metadata_url": ("url", True),
    "repository_targets_url": ("url", True),
    "trust_director_root_file": ("path", False),
    "trust_image_root_file": ("path", False),
    "mqtt_host": ("str", False),
    "mqtt_port": ("int", False),
    "mqtt_password": ("str", False),
    "mqtt_password_file": ("path", False),
    "mqtt_ca_file": ("path", False),
    "mqtt_cert_file": ("path", False),
    "mqtt_key_file": ("path", False),
    "mqtt_keepalive_s": ("int", False),
    "mqtt_reconnect_max_s": ("float", False),
    "server_host": ("str", False),
    "server_port": ("int", False),
    "server_unix_socket": ("path", False),
    "server_serve_as": ("str", False),
    "server_threads": ("int", False),
    "server_workers": ("int", False),
    "server_max_batch_size": ("int", False),
    "server_max_queue_delay_ms": ("float", False),
    "hardware_probe_root": ("path", False),
    "gate_timeout_s": ("float", False),
    "gate_latency_rounds": ("int", False),
    "staging_nice": ("int", False),
    "staging_pin_threads": ("bool", False),
    "staging_deadline_s": ("float", False),
    "staging_min_speed_bytes_per_s": ("float", False),
    "staging_reserve_bytes": ("int", False),
    "probation_poll_interval_s": ("float", False),
    "trust_raise_floor_on_commit": ("bool", False),
    "telemetry_enabled": ("bool", False),
    "telemetry_sample_every_s": ("float", False),
    "telemetry_batch_every_s": ("float", False),
    "telemetry_max_points": ("int", False),
    "controller_url": ("url", False),
    "capture_upload_every_s": ("float", False),
    "capture_upload_max_backoff_s": ("float", False),
    "capture_spool_max_bytes": ("int", False),
    "cert_renewal_check_every_s": ("float", False),
    "shutdown_grace_s": ("float", False),
    "log_level": ("str", False),
}
_SECTIONS = {key.split("_", 1)[0] for key in FIELDS if "_" in key}


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """Read `path` (TOML by suffix `.toml`, else JSON; None: environment only), apply the environment."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        raw = _flatten(_read_file(path))
        base = path.resolve().parent
    for key in FIELDS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            raw[key] = env[name]
    if raw.get("state_dir"):
        state_dir = Path(str(raw["state_dir"])).expanduser()
        for key, value in enrollment_defaults(state_dir if state_dir.is_absolute() else base / state_dir).items():
            if key == "mqtt_password_file" and raw.get("mqtt_password"):
                continue
            raw.setdefault(key, value)
    return build_config(raw, base)


def enrollment_defaults(state_dir: Path) -> dict[str, Any]:
    """Keys `edgefleet-agent enroll` already knows (identity/enrollment.json): device id, broker, TLS files."""
    path = state_dir / "identity" / "enrollment.json"
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"enrollment record {path} is unreadable: {e}") from e
    mqtt = record.get("mqtt") if isinstance(record, dict) else None
    if not isinstance(mqtt, dict):
        raise ConfigError(f"enrollment record {path} has no mqtt section")
    out: dict[str, Any] = {"device_id": record.get("device_id"), "controller_url": record.get("api_url"),
                           "mqtt_host": mqtt.get("host"),
                           "mqtt_port": mqtt.get("port"), "mqtt_password_file": mqtt.get("password_file")}
    if mqtt.get("tls"):
        out.update(mqtt_ca_file=record.get("ca_file"), mqtt_cert_file=record.get("cert_file"),
                   mqtt_key_file=record.get("key_file"))
    return {k: v for k, v in out.items() if v is not None}


def build_config(raw: Mapping[str, Any], base: Path) -> DaemonConfig:
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known keys: {', '.join(sorted(FIELDS))}")
    values: dict[str, Value] = {}
    for key, (kind, required) in FIELDS.items():
        if key not in raw or raw[key] is None or raw[key] == "":
            if required:
                raise ConfigError(f"{key} is required (file key or {ENV_PREFIX}{key.upper()})")
            continue
        values[key] = _convert(key, kind, raw[key], base)
    config = DaemonConfig(**values)  # type: ignore[arg-type]
    _check(config)
    return config


def _read_file(path: Path) -> Mapping[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {len(data)} bytes, limit {MAX_CONFIG_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8: {e}") from e
    if path.suffix == ".toml":
        doc = _parse_toml(path, text)
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must hold an object/table, got {type(doc).__name__}")
    return doc


def _parse_toml(path: Path, text: str) -> Any:
    try:
        import tomllib as toml  # Python 3.11+
    except ImportError:
        try:
            import tomli as toml  # type: ignore[no-redef]
        except ImportError:
            raise ConfigError(f"{path}: TOML needs Python 3.11+ or the tomli package; "
                              "use a .json config instead") from None
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e


def _flatten(doc: Mapping[str, Any]) -> dict[str, Any]:
    """`{"mqtt": {"host": h}}` → `{"mqtt_host": h}`; top-level flat keys are accepted as they are."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in _SECTIONS:
                raise ConfigError(f"unknown config section [{key}]; sections: {', '.join(sorted(_SECTIONS))}")
            for sub, item in value.items():
                if isinstance(item, dict):
                    raise ConfigError(f"[{key}] {sub}: nested tables are not allowed")
                flat[f"{key}_{sub}"] = item
        else:
            flat[key] = value
    return flat


def _convert(key: str, kind: str, value: Any, base: Path) -> Value:
    from_env = isinstance(value, str)
    try:
        if kind in ("str", "url"):
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind == "path":
            if not isinstance(value, str):
                raise TypeError
            p = Path(value).expanduser()
            return p if p.is_absolute() else (base / p)
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise TypeError
            return int(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _BOOLS:
                return _BOOLS[value.lower()]
            raise TypeError
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise TypeError
            return float(value)
    except (TypeError, ValueError):
        where = "environment" if from_env else "file"
        raise ConfigError(f"{key} must be a {kind}, got {value!r:.80} (from the {where})") from None
    raise ConfigError(f"{key}: unknown kind {kind}")


def _check(c: DaemonConfig) -> None:
    if not _DEVICE_ID.match(c.device_id):
        raise ConfigError(f"device_id must match {_DEVICE_ID.pattern}, got {c.device_id!r}")
    for key, url in (("repository_metadata_url", c.repository_metadata_url),
                     ("repository_targets_url", c.repository_targets_url)):
        if not re.match(r"^(https?|file)://", url):
            raise ConfigError(f"{key} must be an http(s):// or file:// URL, got {url!r:.80}")
    if c.controller_url is not None and not re.match(r"^https?://", c.controller_url):
        raise ConfigError(f"controller_url must be an http(s):// URL, got {c.controller_url!r:.80}")
    for key, port, low in (("mqtt_port", c.mqtt_port, 1), ("server_port", c.server_port, 0)):
        if not low <= port <= 65535:
            raise ConfigError(f"{key} must be within {low}..65535, got {port}")
    positive = {"mqtt_keepalive_s": c.mqtt_keepalive_s, "mqtt_reconnect_max_s": c.mqtt_reconnect_max_s,
                "gate_timeout_s": c.gate_timeout_s, "gate_latency_rounds": c.gate_latency_rounds,
                "server_max_batch_size": c.server_max_batch_size,
                "probation_poll_interval_s": c.probation_poll_interval_s, "shutdown_grace_s": c.shutdown_grace_s,
                "telemetry_sample_every_s": c.telemetry_sample_every_s,
                "telemetry_batch_every_s": c.telemetry_batch_every_s,
                "capture_upload_every_s": c.capture_upload_every_s,
                "capture_upload_max_backoff_s": c.capture_upload_max_backoff_s,
                "capture_spool_max_bytes": c.capture_spool_max_bytes, "staging_deadline_s": c.staging_deadline_s,
                "staging_min_speed_bytes_per_s": c.staging_min_speed_bytes_per_s}
    for key, number in positive.items():
        if not number > 0:
            raise ConfigError(f"{key} must be positive, got {number}")
    for key, count in (("server_threads", c.server_threads), ("server_workers", c.server_workers)):
        if count is not None and count < 1:
            raise ConfigError(f"{key} must be at least 1, got {count}")
    if c.cert_renewal_check_every_s != 0 and not 60 <= c.cert_renewal_check_every_s <= 30 * 86400:
        raise ConfigError("cert_renewal_check_every_s must be 0 (off) or within 60..2592000 s, "
                          f"got {c.cert_renewal_check_every_s}")
    if not 0 <= c.staging_nice <= 19:
        raise ConfigError(f"staging_nice must be within 0..19, got {c.staging_nice}")
    if c.staging_reserve_bytes < 0:
        raise ConfigError(f"staging_reserve_bytes must not be negative, got {c.staging_reserve_bytes}")
    if c.server_max_queue_delay_ms < 0:
        raise ConfigError(f"server_max_queue_delay_ms must not be negative, got {c.server_max_queue_delay_ms}")
    if c.log_level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {c.log_level!r}")
    if (c.trust_director_root_file is None) != (c.trust_image_root_file is None):
        raise ConfigError("trust_director_root_file and trust_image_root_file go together")
    if c.mqtt_password is not None and c.mqtt_password_file is not None:
        raise ConfigError("give mqtt_password or mqtt_password_file, not both")
    if (c.mqtt_cert_file is None) != (c.mqtt_key_file is None):
        raise ConfigError("mqtt_cert_file and mqtt_key_file go together")
    if not c.hardware_probe_root.is_dir():
        raise ConfigError(f"hardware_probe_root {c.hardware_probe_root} is not a folder")
