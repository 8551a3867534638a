"""Background work of the controller that must not block start-up or die on one failure.

- `BackgroundStart`: starting a service that needs a peer (e.g. the MQTT broker). The controller must
  come up even when the broker is down — operators still need the API to find out why — so such
  services are started from a thread that retries with backoff until they connect or the app stops.
- `Periodic`: a job run every few seconds on its own thread (the device liveness sweep). A run that
  raises is logged and the next one happens on schedule: a database restart must not end the job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class BackgroundStart:
    def __init__(
        self, service: Startable, *, what: str, min_retry_s: float = 1.0, max_retry_s: float = 30.0
    ) -> None:
        self.service = service
        self.what = what
        self._min_retry_s, self._max_retry_s = min_retry_s, max_retry_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = threading.Event()
        self.last_error: str | None = None

    def _run(self) -> None:
        delay_s = self._min_retry_s
        while not self._stop.is_set():
            try:
                self.service.start()
            except Exception as e:  # whatever the peer does, keep trying until told to stop
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("%s did not start (retrying in %.0f s): %s", self.what, delay_s, e)
                self._stop.wait(delay_s)
                delay_s = min(self._max_retry_s, delay_s * 2)
                continue
            self.last_error = None
            self.started.set()
            return

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"start-{self.what}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self.started.is_set():
            self.service.stop()


class Periodic:
    """Runs `job` every `every_s` seconds, the first time `first_after_s` after `start()`."""

    def __init__(self, job: Callable[[], Any], *, every_s: float, what: str, first_after_s: float | None = None
                 ) -> None:
        if not every_s > 0:
            raise ValueError(f"{what}: every_s must be positive, got {every_s}")
        self.job = job
        self.what = what
        self.every_s = every_s
        self.first_after_s = every_s if first_after_s is None else first_after_s
        self.runs = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        delay_s = self.first_after_s
        while not self._stop.wait(delay_s):
            delay_s = self.every_s
            try:
                self.job()
            except Exception as e:  # noqa: BLE001 - try again at the next period
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("%s failed (next try in %.0f s): %s", self.what, self.every_s, e)
                continue
            self.runs += 1
            self.last_error = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.what, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
