"""A production-shaped fleet for provisioning tests: a controller served by uvicorn on a free port,
its MQTT bridge, and a Mosquitto whose device listener does mutual TLS with the controller's fleet CA.

    ansible-playbook (local) ──HTTP──▶ controller (create_app + uvicorn thread) ──bridge──┐
           │ installs + enrolls                     fleet CA ─▶ broker TLS files           ▼
           ▼                                                                  Mosquitto: 1 loopback listener
    sandbox/opt/edgefleet/agent ── edgefleet-agent run ──mutual TLS (device cert)──▶  + device mTLS listener
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from controller.app import create_app
from controller.auth import create_api_token
from controller.enrollment.ca import FleetCA
from controller.mqtt.mosquitto_auth import acl_file
from controller.security.__main__ import BRIDGE_USERNAME
from controller.security.broker_tls import CONTROLLER_IDENTITY, device_listener_conf, write_broker_tls
from controller.settings import Settings
from tests.services import HOST, Mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"


def build_wheel(out_dir: Path) -> Path:
    """A wheel of this checkout, built from a copy so the shared tree gets no build/ folder."""
    src = out_dir / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in ("agent", "controller", "manifests"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = out_dir / "wheels"
    # Build isolation: the project's metadata needs a newer setuptools than the test venv may hold.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)],
                   check=True, timeout=300, capture_output=True)
    (wheel,) = wheels.glob("edgefleet-*.whl")
    return wheel


def seed_venv(venv: Path) -> None:
    """Pre-create the agent venv so that the dependencies of the `agent` extra are importable from this
    test environment (a `.pth` line), standing in for a wheel cache: the playbook still runs pip,
    which installs edgefleet itself and must find every dependency already satisfied (--no-index)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    ours = next(p for p in map(Path, sys.path) if p.name == "site-packages" and str(p).startswith(sys.prefix))
    (site / "edgefleet-test-deps.pth").write_text(f"{ours}\n")
    # pip itself comes from the same place; the ansible pip module runs `<venv>/bin/pip`.
    pip = venv / "bin" / "pip"
    pip.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n")
    pip.chmod(0o755)


class ServedApp:
    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="controller", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the controller did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@dataclass
class Fleet:
    url: str
    admin_token: str
    broker: Mosquitto
    device_port: int
    settings: Settings
    app: ServedApp

    def api(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def device_online(self, device_id: str) -> bool:
        try:
            return bool(self.api(f"/api/v1/devices/{device_id}")["online"])
        except urllib.error.HTTPError:
            return False


def start_fleet(tmp_path: Path, keys_dir: Path, mosquitto_factory: Any) -> Fleet:
    bridge_password = secrets.token_urlsafe(24)
    port, device_port = free_port(), free_port()
    ca_dir = tmp_path / "controller" / "ca"
    ca = FleetCA.load_or_create(ca_dir)  # the controller's CA; create_app loads the same folder
    tls = write_broker_tls(ca_dir, tmp_path / "broker-tls", [HOST], crl_pem=ca.crl_pem([]))
    # Main listener: passwords, for the bridge; device listener: mutual TLS with the fleet CA.
    broker = mosquitto_factory(
        users={BRIDGE_USERNAME: bridge_password},
        acl=acl_file([BRIDGE_USERNAME, CONTROLLER_IDENTITY]),
        allow_anonymous=False,
        extra_conf=device_listener_conf(tls, port=device_port, bind_address=HOST),
    )
    settings = Settings(
        state_dir=tmp_path / "controller", database_url=f"sqlite:///{tmp_path / 'controller.db'}", keys_dir=keys_dir,
        public_url=f"http://{HOST}:{port}", mqtt_host=HOST, mqtt_port=device_port, mqtt_tls=True,
        mqtt_bridge=True, mqtt_bridge_username=BRIDGE_USERNAME, mqtt_bridge_password=bridge_password,
        mqtt_bridge_host=HOST, mqtt_bridge_port=broker.port,
    )
    app = create_app(settings)
    served = ServedApp(app, port)
    served.start()
    with app.state.ctx.session_factory() as session:
        _, admin = create_api_token(session, name="provisioning-admin", role="admin")
        session.commit()
    return Fleet(f"http://{HOST}:{port}", admin, broker, device_port, settings, served)


def ansible_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(PLAYBOOKS / "ansible.cfg"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    return env


def run_playbook(playbook: str, inventory: Path, extra_vars: dict[str, Any], tmp_path: Path,
                 timeout_s: float = 240.0) -> subprocess.CompletedProcess[str]:
    vars_file = tmp_path / f"vars-{playbook}-{time.monotonic_ns()}.json"
    vars_file.write_text(json.dumps(extra_vars))
    vars_file.chmod(0o600)
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOKS / playbook),
         "-e", f"@{vars_file}"],
        env=ansible_env(tmp_path), capture_output=True, text=True, timeout=timeout_s, cwd=str(PLAYBOOKS),
    )
