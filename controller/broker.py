"""The embedded MQTT broker: amqtt run in-process, for a lab controller and the demo.

A controller with no broker of its own (`edgefleet controller serve --embedded-broker`, `make demo`)
starts this one (`app_with_embedded_broker`) on a thread with its own event loop, so the API's event loop never waits on MQTT work
and the broker stops with the controller.

    EmbeddedBroker(host, port, authority)
      └── thread "mqtt-broker": asyncio loop ─ amqtt.Broker
              ├── _AuthorityAuthPlugin   CONNECT:  authority.check_password(username, password)
              └── _AuthorityTopicPlugin  PUBLISH / SUBSCRIBE / RECEIVE: device_topic_allowed(...)

The access rules are those of the generated Mosquitto ACL (`controller.mqtt.mosquitto_auth`): a device
publishes only its own `status`, `events`, `telemetry` and `online`, and reads only its own
`assignment`; controller accounts read and write everything. Rules key on the authenticated username,
never on the client id a device chooses. With no authority the broker accepts anonymous clients, which
is what a throw-away lab wants and nothing else should.

amqtt speaks MQTT 3.1.1 only, keeps retained messages in memory (they vanish with the process) and
handles a few thousand messages a second (../shared/MEASURED.md): right for a demo or a lab of dozens
of devices. A fleet runs Mosquitto or EMQX with the generated password and ACL files.

Errors: `BrokerStartError` (the port is taken or amqtt refused its configuration; retrying the same
port will not help).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Collection
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from agent import wire
from controller.mqtt.mosquitto_auth import DEVICE_PUBLISH_CHANNELS

log = logging.getLogger("controller.broker")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class BrokerStartError(RuntimeError):
    """The embedded broker did not start (port in use, bad listener)."""


class BrokerAuthority(Protocol):
    """Who may connect, and which accounts are controllers (full access)."""

    def check_password(self, username: str, password: str) -> bool: ...

    def is_controller(self, username: str) -> bool: ...


def device_topic_allowed(username: str, topic: str, action: str) -> bool:
    """A device account's access, the same as the generated Mosquitto ACL.

    `action` is "publish", "subscribe" or "receive". Wildcards in a device's subscription are refused:
    `edgefleet/v1/+/assignment` would otherwise read every device's assignment.
    """
    root = wire.TOPIC_ROOT
    if "+" in topic or "#" in topic:
        return False
    if action == "publish":
        return topic in {f"{root}/{username}/{channel}" for channel in DEVICE_PUBLISH_CHANNELS}
    return topic == f"{root}/{username}/assignment"


class StaticAuthority:
    """Fixed accounts: `{username: password}` and the controller usernames among them (tests, demo)."""

    def __init__(self, passwords: dict[str, str], controllers: Collection[str]) -> None:
        self._passwords = dict(passwords)
        self._controllers = frozenset(controllers)

    def add(self, username: str, password: str) -> None:
        self._passwords[username] = password

    def check_password(self, username: str, password: str) -> bool:
        import secrets

        expected = self._passwords.get(username)
        return expected is not None and secrets.compare_digest(expected.encode(), password.encode())

    def is_controller(self, username: str) -> bool:
        return username in self._controllers


# amqtt builds plugins from a dotted path and a config dict; the authority object reaches them through
# this table, keyed by a per-broker id carried in that config.
_AUTHORITIES: dict[str, BrokerAuthority] = {}
_IDS = itertools.count(1)


def _authority_for(plugin: Any) -> BrokerAuthority | None:
    config = plugin.context.config
    key = config.get("authority") if isinstance(config, dict) else getattr(config, "authority", None)
    return _AUTHORITIES.get(str(key)) if key is not None else None


@dataclass
class _PluginConfig:
    authority: str = ""


class _AuthorityAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    Config = _PluginConfig

    async def authenticate(self, *, session: Any) -> bool | None:
        authority = _authority_for(self)
        if authority is None:
            return False
        username, password = session.username, session.password
        if not username or password is None:
            return False
        return authority.check_password(str(username), str(password))


class _AuthorityTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    Config = _PluginConfig

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        authority = _authority_for(self)
        if authority is None or session is None or topic is None or action is None:
            return False
        username = str(session.username or "")
        if authority.is_controller(username):
            return True
        return device_topic_allowed(username, topic, action.value)


class _AnonymousPlugin(BaseAuthPlugin):  # type: ignore[misc]
    Config = _PluginConfig

    async def authenticate(self, *, session: Any) -> bool | None:
        return True


class EmbeddedBroker:
    """amqtt on 127.0.0.1 (or `host`), started and stopped from any thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, authority: BrokerAuthority | None = None
                 ) -> None:
        self.host = host
        self.port = port
        self.authority = authority
        self._key = f"broker-{next(_IDS)}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Broker | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        plugins: dict[str, Any]
        if self.authority is None:
            plugins = {f"{__name__}._AnonymousPlugin": {}}
        else:
            _AUTHORITIES[self._key] = self.authority
            plugins = {
                f"{__name__}._AuthorityAuthPlugin": {"authority": self._key},
                f"{__name__}._AuthorityTopicPlugin": {"authority": self._key},
            }
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 0}},
            "plugins": plugins,
        }

    def start(self) -> None:
        started: Future[None] = Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._broker = Broker(self._config(), loop=loop)
                loop.run_until_complete(self._broker.start())
            except BaseException as e:  # noqa: BLE001 - handed to the starting thread
                started.set_exception(e)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="mqtt-broker", daemon=True)
        self._thread.start()
        try:
            started.result(timeout=START_TIMEOUT_S)
        except Exception as e:
            _AUTHORITIES.pop(self._key, None)
            raise BrokerStartError(f"embedded MQTT broker on {self.host}:{self.port} did not start: {e!r}") from e
        log.info("embedded MQTT broker listening on %s", self.url)

    def stop(self) -> None:
        loop, broker, thread = self._loop, self._broker, self._thread
        if loop is None or broker is None or thread is None or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout=STOP_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - stopping must not fail the caller's shutdown
            log.warning("embedded MQTT broker did not shut down cleanly: %s", e)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=STOP_TIMEOUT_S)
        _AUTHORITIES.pop(self._key, None)
        self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DatabaseAuthority:
    """Device accounts from the controller database (enrolled, not revoked) plus fixed controller accounts.

    Each CONNECT reads the device row, so a revocation takes effect on the device's next connection.
    """

    def __init__(self, session_factory: Any, controllers: dict[str, str]) -> None:
        self._session_factory = session_factory
        self._controllers = StaticAuthority(controllers, controllers.keys())

    def check_password(self, username: str, password: str) -> bool:
        if self._controllers.is_controller(username):
            return self._controllers.check_password(username, password)
        from sqlalchemy import select

        from controller.db.models import Device
        from controller.mqtt.mosquitto_auth import verify_password

        with self._session_factory() as session:
            stored = session.scalar(
                select(Device.mqtt_password_hash).where(Device.mqtt_username == username, Device.status == "active")
            )
        if not stored:
            return False
        try:
            return verify_password(password, stored)
        except Exception:  # noqa: BLE001 - a damaged hash refuses the login, it must not kill the broker
            log.warning("device %s has an unreadable MQTT password hash", username)
            return False

    def is_controller(self, username: str) -> bool:
        return self._controllers.is_controller(username)


def app_with_embedded_broker(settings: Any, create_app: Any, bind_host: str = "127.0.0.1") -> tuple[Any, EmbeddedBroker]:
    """The controller app for `settings` plus an embedded broker on `settings.mqtt_port` for it.

    Devices log in with the credentials they got at enrollment (checked against the database); the
    controller's bridge uses the configured account, or a fresh random one when none is configured.
    The broker is returned unstarted: start it before serving the app, stop it after.
    """
    import secrets

    username = settings.mqtt_bridge_username or "edgefleet-controller"
    password = settings.mqtt_bridge_password or secrets.token_urlsafe(24)
    settings = settings.model_copy(update={
        "mqtt_bridge": True, "mqtt_bridge_username": username, "mqtt_bridge_password": password,
        "mqtt_bridge_host": "127.0.0.1" if bind_host in ("0.0.0.0", "::") else bind_host,
        "mqtt_bridge_port": settings.mqtt_port,
    })
    app = create_app(settings)
    if "bridge" in app.state.ctx.extras:
        speak_311(app.state.ctx.extras["bridge"])
    authority = DatabaseAuthority(app.state.ctx.session_factory, {username: password})
    return app, EmbeddedBroker(bind_host, settings.mqtt_port, authority)


def speak_311(bridge: Any) -> None:
    """Pin an `MqttBridge` (not yet started) to MQTT 3.1.1, the only protocol amqtt speaks.

    The bridge's automatic negotiation opens with an MQTT 5 CONNECT; amqtt 0.12 misreads one that
    carries a username and password and never answers it, so the probe would wait out its timeout.
    """
    import dataclasses

    bridge.config = dataclasses.replace(bridge.config, protocol="3.1.1")
