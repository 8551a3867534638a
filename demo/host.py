"""The demo's controller host: keys, the embedded broker, the controller on SQLite, an admin token.

Everything runs in this process except the agents: uvicorn serves `create_app(settings)` on a thread,
the amqtt broker runs on its own loop (`controller.broker`), devices log in to it with the MQTT
credentials the controller gave them at enrollment. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from controller.api_client import ApiClient, ClientConfig
from controller.app import create_app
from controller.auth import create_api_token
from controller.broker import EmbeddedBroker, app_with_embedded_broker
from controller.settings import Settings
from demo.wiring import app_rollouts
from manifests import assignment as A
from manifests.keyring import Keyring

log = logging.getLogger("demo")
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ControllerHost:
    state_dir: Path
    api_port: int = 0
    broker_port: int = 0
    gate: A.GatePolicy = field(default_factory=A.GatePolicy)
    probation: A.ProbationPolicy = field(default_factory=A.ProbationPolicy)
    variants: tuple[str, ...] = ()  # empty: every variant the build pipeline knows

    def __post_init__(self) -> None:
        self.api_port = self.api_port or free_port()
        self.broker_port = self.broker_port or free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.broker: EmbeddedBroker | None = None
        self.app: Any = None
        self.admin_token = ""

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def start(self) -> None:
        controller_dir = self.state_dir / "controller"
        keys_dir = controller_dir / "keys"
        if not keys_dir.exists():
            Keyring.create(keys_dir)  # what `edgefleet keys init` does; the app signs with it
        extra: dict[str, Any] = {"build_variants": self.variants} if self.variants else {}
        settings = Settings(
            state_dir=controller_dir, public_url=self.url, host="127.0.0.1", port=self.api_port,
            mqtt_host="127.0.0.1", mqtt_port=self.broker_port, **extra,
        )
        self.app, self.broker = app_with_embedded_broker(settings, create_app)
        self.broker.start()
        self.engine = app_rollouts(self.ctx, {"gate": self.gate, "probation": self.probation})
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.api_port,
                                                     log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, name="controller-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not start on {self.url}")
            time.sleep(0.05)
        with self.ctx.session_factory() as session:
            _, self.admin_token = create_api_token(session, name="demo-admin", role="admin")
            session.commit()
        bridge = self.ctx.extras["bridge"]
        if not bridge.connected.wait(START_TIMEOUT_S):
            raise RuntimeError("the controller's MQTT bridge did not connect to the embedded broker")

    def client(self) -> ApiClient:
        return ApiClient(ClientConfig(url=self.url, token=self.admin_token), timeout_s=120.0)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self.broker is not None:
            self.broker.stop()
