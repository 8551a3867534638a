"""Device config: TOML/JSON files, sections, environment overrides, enrollment defaults, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.daemon.config import load_config
from agent.daemon.errors import ConfigError

BASE = """device_id = "edge-7"
state_dir = "state"
[repository]
metadata_url = "http://127.0.0.1:8080/repo/metadata/"
targets_url = "http://127.0.0.1:8080/repo/"
"""


def write(tmp_path: Path, text: str, name: str = "device.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_sections_defaults_and_relative_paths(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, BASE + "[mqtt]\nport = 11883\n[server]\nport = 0\n"), environ={})
    assert c.device_id == "edge-7" and c.mqtt_port == 11883 and c.server_port == 0
    assert c.state_dir == tmp_path / "state" and c.trust_path == tmp_path / "state" / "trust.json"
    assert c.mqtt_host == "127.0.0.1" and c.hardware_probe_root == Path("/")


def test_staging_section_reaches_the_update_engine(tmp_path: Path) -> None:
    from agent.daemon.updates import engine_config
    from agent.staging import StagingConfig

    assert engine_config(load_config(write(tmp_path, BASE), environ={})).staging == StagingConfig()
    c = load_config(write(tmp_path, BASE + "[staging]\nnice = 10\npin_threads = false\ndeadline_s = 900\n"
                                         "min_speed_bytes_per_s = 4096\nreserve_bytes = 0\n"),
                    environ={"EDGEFLEET_AGENT_STAGING_NICE": "5"})
    staging = engine_config(c).staging
    assert (staging.nice, staging.pin_threads, staging.deadline_s, staging.min_speed_bytes_per_s,
            staging.reserve_bytes) == (5, False, 900.0, 4096.0, 0)


def test_json_file_and_environment_override_it(tmp_path: Path) -> None:
    doc = {"device_id": "edge-7", "state_dir": str(tmp_path / "s"),
           "repository": {"metadata_url": "file:///repo/metadata/", "targets_url": "file:///repo/"}}
    path = write(tmp_path, json.dumps(doc), "device.json")
    c = load_config(path, environ={"EDGEFLEET_AGENT_MQTT_PASSWORD": "s3cret", "EDGEFLEET_AGENT_SERVER_PORT": "9001",
                                   "EDGEFLEET_AGENT_TRUST_RAISE_FLOOR_ON_COMMIT": "yes"})
    assert c.password() == "s3cret" and c.server_port == 9001 and c.trust_raise_floor_on_commit is True


def test_environment_alone_is_enough(tmp_path: Path) -> None:
    env = {"EDGEFLEET_AGENT_DEVICE_ID": "edge-9", "EDGEFLEET_AGENT_STATE_DIR": str(tmp_path),
           "EDGEFLEET_AGENT_REPOSITORY_METADATA_URL": "http://h/metadata/",
           "EDGEFLEET_AGENT_REPOSITORY_TARGETS_URL": "http://h/"}
    assert load_config(None, environ=env).device_id == "edge-9"


def test_enrollment_record_supplies_identity_and_broker(tmp_path: Path) -> None:
    identity = tmp_path / "state" / "identity"
    identity.mkdir(parents=True)
    (identity / "mqtt.password").write_text("pw-from-enroll\n")
    record = {"device_id": "edge-enrolled", "mqtt": {"host": "broker.lan", "port": 8883, "tls": True,
                                                    "password_file": str(identity / "mqtt.password")},
              "ca_file": str(identity / "ca.crt"), "cert_file": str(identity / "device.crt"),
              "key_file": str(identity / "device.key")}
    (identity / "enrollment.json").write_text(json.dumps(record))
    c = load_config(write(tmp_path, BASE.replace('device_id = "edge-7"\n', "")), environ={})
    assert (c.device_id, c.mqtt_host, c.mqtt_port) == ("edge-enrolled", "broker.lan", 8883)
    assert c.password() == "pw-from-enroll" and c.mqtt_cert_file == identity / "device.crt"


@pytest.mark.parametrize("text, message", [
    (BASE.replace('device_id = "edge-7"\n', ""), "device_id is required"),
    (BASE + "[mqtt]\nport = 70000\n", "mqtt_port must be within 1..65535, got 70000"),
    (BASE + "[mqtt]\nport = \"x\"\n", "mqtt_port must be a int, got 'x'"),
    (BASE + "[mqtt]\nport = 1883.5\n", "mqtt_port must be a int"),
    (BASE + "[mqtt]\nhots = \"a\"\n", "unknown config keys ['mqtt_hots']"),
    (BASE + "[mqt]\nhost = \"a\"\n", "unknown config section [mqt]"),
    (BASE.replace("edge-7", "edge/7"), "device_id must match"),
    (BASE.replace("http://127.0.0.1:8080/repo/\"", "ftp://x/\""), "repository_targets_url must be an http(s)://"),
    (BASE + "[gate]\ntimeout_s = -1\n", "gate_timeout_s must be positive"),
    (BASE + "[staging]\nnice = 20\n", "staging_nice must be within 0..19, got 20"),
    (BASE + "[staging]\nreserve_bytes = -1\n", "staging_reserve_bytes must not be negative"),
    (BASE + "[staging]\nmin_speed_bytes_per_s = 0\n", "staging_min_speed_bytes_per_s must be positive"),
    (BASE + "[staging]\npin_threads = \"maybe\"\n", "staging_pin_threads must be a bool"),
    (BASE + "[trust]\ndirector_root_file = \"d.json\"\n", "go together"),
    (BASE + "[hardware]\nprobe_root = \"no-such-tree\"\n", "is not a folder"),
    ("log_level = \"LOUD\"\n" + BASE, "log_level must be one of"),
    ("device_id = [", "not valid TOML"),
])
def test_invalid_configs_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert message in str(info.value)


def test_bad_environment_value_says_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), environ={"EDGEFLEET_AGENT_SERVER_PORT": "eighty"})
    assert "server_port" in str(info.value) and "environment" in str(info.value)


def test_missing_and_non_object_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", environ={})
    with pytest.raises(ConfigError, match="must hold an object"):
        load_config(write(tmp_path, "[1, 2]", "device.json"), environ={})
