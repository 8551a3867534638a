"""`TelemetryService`: the writer thread, the MQTT subscriber and the hourly retention job, as one unit
the app starts and stops (through `BackgroundStart`, so a broker that is down does not block start-up).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from controller.telemetry.ingest import IngestConfig, TelemetrySubscriber, TelemetryWriter
from controller.telemetry.retention import RetentionPolicy, apply_retention

log = logging.getLogger(__name__)


class TelemetryService:
    def __init__(self, session_factory: sessionmaker[Session], config: IngestConfig,
                 retention: RetentionPolicy | None = None, retention_every_s: float = 3600.0) -> None:
        self.session_factory = session_factory
        self.config = config
        self.retention = retention or RetentionPolicy()
        self.retention_every_s = retention_every_s
        self.writer = TelemetryWriter(session_factory, config)
        self.subscriber = TelemetrySubscriber(config, self.writer)
        self.started_at = time.monotonic()
        self._stop = threading.Event()
        self._retention_thread: threading.Thread | None = None

    def start(self) -> None:
        self.writer.start()
        try:
            self.subscriber.start()
        except Exception:
            self.writer.stop()
            raise
        self._stop.clear()
        self._retention_thread = threading.Thread(target=self._retain, name="telemetry-retention", daemon=True)
        self._retention_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.subscriber.stop()
        self.writer.stop()
        if self._retention_thread is not None:
            self._retention_thread.join(5.0)

    def stats(self) -> Counter[str]:
        out: Counter[str] = Counter()
        out.update({f"subscriber_{k}": v for k, v in self.subscriber.stats.items()})
        out.update({f"writer_{k}": v for k, v in self.writer.stats.items()})
        return out

    def _retain(self) -> None:
        while not self._stop.wait(self.retention_every_s):
            try:
                apply_retention(self.session_factory, self.retention)
            except Exception:  # noqa: BLE001 - try again at the next period
                log.exception("telemetry retention failed")


def telemetry_service(settings: Any, session_factory: sessionmaker[Session]) -> TelemetryService:
    """The service for the controller's settings: same broker and credentials as the MQTT bridge."""
    return TelemetryService(session_factory, IngestConfig(
        host=settings.mqtt_host, port=settings.mqtt_port, username=settings.mqtt_bridge_username,
        password=settings.mqtt_bridge_password,
    ))
