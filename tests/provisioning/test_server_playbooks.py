"""`controller.yml` and `broker.yml` for real, against a sandbox prefix with a local connection:
the installed controller serves from the written settings, and Mosquitto runs the generated mutual-TLS
configuration with the certificate the playbook issued from that controller's fleet CA."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.enrollment.ca import FleetCA
from tests.provisioning.harness import run_playbook, seed_venv
from tests.security.tls_clients import TlsClient, issue_client
from tests.services import HOST, free_port, mqtt_answers, wait_until


def _inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yml"
    local = f"ansible_connection: local, ansible_python_interpreter: {sys.executable}"
    path.write_text(
        "all:\n  children:\n"
        f"    controller:\n      hosts:\n        sandbox-controller: {{{local}}}\n"
        f"    broker:\n      hosts:\n        sandbox-broker: {{{local}}}\n"
    )
    return path


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("EDGEFLEET_"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_controller_and_broker_playbooks_produce_a_working_mtls_broker(tmp_path: Path, agent_wheel: Path) -> None:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(mosquitto):
        pytest.skip("needs mosquitto")
    root = tmp_path / "sandbox"
    seed_venv(root / "opt" / "edgefleet" / "controller")
    seed_venv(root / "opt" / "edgefleet" / "broker-tools")
    api_port, device_port, local_port = free_port(), free_port(), free_port()
    bridge_password = secrets.token_urlsafe(24)
    common = {
        "edgefleet_root": str(root),
        "edgefleet_package": str(agent_wheel),
        "edgefleet_pip_extra_args": f"--no-index --find-links {agent_wheel.parent}",
        "edgefleet_create_user": False,
        "edgefleet_manage_service": False,
        "edgefleet_manage_packages": False,
        "edgefleet_controller_url": f"http://{HOST}:{api_port}",
        "edgefleet_bridge_password": bridge_password,
    }
    inventory = _inventory(tmp_path)
    run = run_playbook("controller.yml", inventory, {
        **common, "edgefleet_listen_port": api_port, "edgefleet_public_url": f"http://{HOST}:{api_port}",
        "edgefleet_mqtt_host": HOST, "edgefleet_mqtt_port": device_port, "edgefleet_mqtt_bridge": False,
    }, tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    etc = root / "etc" / "edgefleet"
    state = root / "var" / "lib" / "edgefleet"
    assert stat.S_IMODE((etc / "controller.env").stat().st_mode) == 0o600
    assert bridge_password in (etc / "controller.env").read_text()
    assert bridge_password not in (etc / "controller.toml").read_text()
    assert (state / "keys" / "image-root").is_dir()
    unit = (root / "etc" / "systemd" / "system" / "edgefleet-controller.service").read_text()
    assert "controller.security check-keys" in unit and "EnvironmentFile=" in unit

    venv_bin = root / "opt" / "edgefleet" / "controller" / "bin"
    check = subprocess.run([str(venv_bin / "python"), "-m", "controller.security", "check-keys", "--state-dir",
                            str(state)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    log = (tmp_path / "controller.log").open("wb")
    server = subprocess.Popen([str(venv_bin / "edgefleet"), "controller", "serve", "--config", str(etc / "controller.toml")],
                              env={**os.environ, **_env_file(etc / "controller.env")}, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    broker: subprocess.Popen[bytes] | None = None
    clients: list[TlsClient] = []
    try:
        wait_until(lambda: _healthy(f"http://{HOST}:{api_port}") or server.poll() is not None, timeout_s=60,
                   message="the installed controller to answer")
        assert server.poll() is None, (tmp_path / "controller.log").read_text()[-3000:]

        run = run_playbook("broker.yml", inventory, {
            **common, "edgefleet_ca_host": "sandbox-controller", "edgefleet_broker_hosts": [HOST],
            "edgefleet_broker_device_port": device_port, "edgefleet_broker_local_port": local_port,
            "edgefleet_broker_bind_address": HOST, "edgefleet_crl_token": "efo_" + "x" * 43,
        }, tmp_path)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "efo_xxxxxxxx" not in run.stdout and bridge_password not in run.stdout
        tls_dir = root / "etc" / "mosquitto" / "edgefleet"
        assert stat.S_IMODE((tls_dir / "broker.key").stat().st_mode) == 0o600
        conf = (root / "etc" / "mosquitto" / "conf.d" / "edgefleet.conf").read_text()
        for line in ("require_certificate true", "use_identity_as_username true", "allow_anonymous false",
                     f"crlfile {tls_dir}/crl.pem", "max_packet_size 262144", f"acl_file {tls_dir}/acl"):
            assert line in conf, conf
        assert "OnUnitActiveSec=5min" in (root / "etc" / "systemd" / "system" / "edgefleet-crl.timer").read_text()
        crl_unit = (root / "etc" / "systemd" / "system" / "edgefleet-crl.service").read_text()
        assert '--reload "systemctl reload mosquitto"' in crl_unit and "restart" not in crl_unit.split("ExecStart=")[1]

        # Run Mosquitto on exactly that configuration (plus what a test run needs: root, a log).
        test_conf = tmp_path / "mosquitto.conf"
        extra = ["user root"] if os.geteuid() == 0 else []
        test_conf.write_text(conf + "\n".join([*extra, f"log_dest file {tmp_path / 'mosquitto.log'}", "log_type all"]) + "\n")
        broker = subprocess.Popen([mosquitto, "-c", str(test_conf)], start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: mqtt_answers(HOST, local_port) or broker.poll() is not None, timeout_s=30,
                   message="mosquitto to start")
        assert broker.poll() is None, (tmp_path / "mosquitto.log").read_text()[-3000:]

        ca = FleetCA.load_or_create(state / "ca")  # the controller's CA, which the playbook used
        (tmp_path / "certs").mkdir()
        device = issue_client(ca, tmp_path / "certs", "dev-sandbox")
        a = TlsClient(HOST, device_port, tls_dir / "ca.crt", device, "dev-sandbox")
        clients.append(a)
        assert a.connect(), a.error
        assert not TlsClient(HOST, device_port, tls_dir / "ca.crt", None, "nobody").connect(timeout_s=5)

        # The controller's bridge logs in on the loopback listener with the password the playbook set.
        assert not _password_login(local_port, "edgefleet_bridge", "wrong-password")
        seen: list[tuple[str, bytes]] = []
        bridge = _password_login(local_port, "edgefleet_bridge", bridge_password, seen)
        assert bridge is not None
        try:
            a.publish("edgefleet/v1/dev-other/assignment", b"forged")
            marker = secrets.token_hex(8).encode()
            a.publish("edgefleet/v1/dev-sandbox/status", marker)
            wait_until(lambda: ("edgefleet/v1/dev-sandbox/status", marker) in seen, message="the device's status")
            assert all(payload != b"forged" for _, payload in seen)
        finally:
            bridge.disconnect()
            bridge.loop_stop()
    finally:
        for c in clients:
            c.close()
        if broker is not None:
            broker.send_signal(signal.SIGTERM)
            broker.wait(timeout=15)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def _password_login(port: int, username: str, password: str,
                    seen: list[tuple[str, bytes]] | None = None) -> mqtt.Client | None:
    """A connected client subscribed to the whole tree, or None when the broker refused the login."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{username}-{secrets.token_hex(3)}")
    client.username_pw_set(username, password)
    accepted, done = threading.Event(), threading.Event()

    def on_connect(c, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        if not reason.is_failure:
            accepted.set()
            c.subscribe("edgefleet/v1/#", qos=1)
        done.set()

    def on_subscribe(c, userdata, mid, reasons, props):  # type: ignore[no-untyped-def]
        subscribed.set()

    subscribed = threading.Event()
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda c, u, m: seen.append((m.topic, bytes(m.payload))) if seen is not None else None
    client.connect(HOST, port)
    client.loop_start()
    if not done.wait(10) or not accepted.is_set() or not subscribed.wait(10):
        client.loop_stop()
        return None
    return client
