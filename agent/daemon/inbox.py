"""The MQTT session's AssignmentPort: hand the newest assignment envelope to the update worker.

Runs on paho's network thread, so it only records bytes and wakes the worker. Only the newest
envelope matters (a later assignment supersedes an earlier one that has not been started), so the
inbox holds one. Verification happens on the worker, not here: it refreshes the image repository
over HTTP, which must not stall the MQTT connection.

The broker re-delivers the retained assignment after every reconnect and restart. An envelope whose
sha256 is the last one this device handled (persisted in `handled_path`) is ignored silently, so an
applied assignment is not reported as a replay each time the connection comes back.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from agent.state.journal import write_atomic


class AssignmentInbox:
    def __init__(self, handled_path: Path) -> None:
        self.handled_path = handled_path
        self._cond = threading.Condition()
        self._payload: bytes | None = None
        self.received = 0
        self.ignored_duplicates = 0

    # --- paho thread ----------------------------------------------------------------------------

    def receive_assignment(self, payload: bytes) -> None:
        digest = hashlib.sha256(payload).hexdigest()
        with self._cond:
            self.received += 1
            if digest == self.handled():
                self.ignored_duplicates += 1
                return
            self._payload = payload
            self._cond.notify_all()

    # --- worker thread --------------------------------------------------------------------------

    def take(self, timeout_s: float) -> bytes | None:
        """The newest unhandled envelope, waiting up to `timeout_s`; None when nothing came."""
        with self._cond:
            if self._payload is None:
                self._cond.wait(timeout_s)
            payload, self._payload = self._payload, None
            return payload

    def put_back(self, payload: bytes) -> None:
        """Retry later (the repository was unreachable), unless a newer envelope arrived meanwhile."""
        with self._cond:
            if self._payload is None:
                self._payload = payload

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def mark_handled(self, payload: bytes) -> None:
        write_atomic(self.handled_path, hashlib.sha256(payload).hexdigest().encode())

    def handled(self) -> str | None:
        try:
            return self.handled_path.read_text(encoding="ascii").strip() or None
        except (OSError, UnicodeDecodeError):
            return None
