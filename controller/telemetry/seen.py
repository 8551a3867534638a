"""`SeenRecorder`: telemetry senders marked as seen in the device registry, off the writer's thread.

Telemetry is the agent's regular heartbeat, so every stored batch says its sender is alive
(`devices.record_seen`: `last_seen_at`, and `online` again for a device the liveness sweep marked
offline). That is one row update per device, which would otherwise sit on the ingest writer's thread
between two flushes; here the writer only notes the senders (a dict update) and this thread writes
them once per `every_s`, so a device that sends many batches in a burst (an outbox replayed after a
reconnect) costs one update, and ingest never waits for the registry.

Precision: a device's `last_seen_at` is the newest receive time noted in its round, at most `every_s`
later than its own message: far below the offline threshold (minimum 10 s). A failed write is counted
(`errors`) and its senders are noted again for the next round, unless newer ones replaced them.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

from sqlalchemy.orm import Session, sessionmaker

from controller.background import Periodic
from controller.devices import record_seen

log = logging.getLogger(__name__)


class SeenRecorder:
    def __init__(self, session_factory: sessionmaker[Session], every_s: float = 1.0) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be positive, got {every_s}")
        self.session_factory = session_factory
        self.every_s = every_s
        self.stats: Counter[str] = Counter()
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._rounds = Periodic(self.flush, every_s=every_s, what="telemetry-seen")

    def note(self, device_ids: Iterable[str], received_at: float) -> None:
        """The writer's side: these devices sent a stored batch received at `received_at` (epoch s)."""
        self.note_again(dict.fromkeys(device_ids, received_at))

    def flush(self) -> int:
        """Write what was noted since the last round; returns how many devices came back online."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        at = datetime.fromtimestamp(max(pending.values()), tz=timezone.utc)
        try:
            with self.session_factory() as session:
                back = record_seen(session, pending, at=at, via="telemetry")
                session.commit()
        except Exception:  # noqa: BLE001 - liveness must never stop ingest; the next round retries
            self.stats["errors"] += 1
            log.warning("marking %d telemetry senders as seen failed", len(pending), exc_info=True)
            self.note_again(pending)
            return 0
        self.stats["rounds"] += 1
        self.stats["back_online"] += len(back)
        return len(back)

    def note_again(self, pending: Mapping[str, float]) -> None:
        """Merge receive times per device, keeping each device's newest (a failed round's senders too)."""
        with self._lock:
            for device_id, received_at in pending.items():
                if self._pending.get(device_id, 0.0) < received_at:
                    self._pending[device_id] = received_at

    def start(self) -> None:
        self._rounds.start()

    def stop(self) -> None:
        self._rounds.stop()
        self.flush()  # what the writer noted last
