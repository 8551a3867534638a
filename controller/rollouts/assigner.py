"""`DirectorAssigner`: turns "device D should run release R" into a signed, retained assignment.

Why a ledger: every device must see strictly increasing assignment versions (its trust check refuses
anything not above the last one it accepted), across controller restarts and replicas. The ledger
holds each device's newest assignment; it is written *before* the envelope is published, so a crash
can only lead to publishing the same version again, never to reusing a number with different content.

Idempotence (the rollout engine's `Assigner` contract): when the device's newest assignment already
names the same release for the same rollout and is not near expiry, the stored envelope is published
again and its version returned; nothing is re-signed.

Rollbacks (`rollback=True`: a wave's automatic revert, an operator's rollback of a rollout, or a
rollout marked as a fleet rollback) are signed with the gate's `max_accuracy_drop` waived: the device
would otherwise refuse to return from a more accurate release to the one the fleet already ran. Every
other gate check (loads, finite outputs, the release's own accuracy floor, latency, memory) stays.

`flush()` waits until the broker acknowledged everything published so far; the engine calls it before
saving a batch as published, so a record never claims an assignment the broker has not got.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from securesystemslib.signer import Signer

from controller.rollouts.errors import RolloutError
from manifests.assignment import Assignment, CapturePolicy, GatePolicy, ProbationPolicy, ReleaseRef, TargetPin
from manifests.director import sign_envelope

_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class LedgerEntry:
    version: int
    release: ReleaseRef
    rollout_id: str | None
    expires_at: float
    payload: bytes


class AssignmentLedger(Protocol):
    def latest(self, device_id: str) -> LedgerEntry | None: ...

    def record(self, device_id: str, entry: LedgerEntry) -> None:
        """Persist durably; raise if `entry.version` is not above the stored one."""


class Publisher(Protocol):
    def publish_assignment(self, device_id: str, signed_payload: bytes) -> Any:
        """Queue a retained QoS 1 publish; the result has `is_published()`."""


@dataclass(frozen=True)
class AssignmentPolicies:
    gate: GatePolicy = GatePolicy()
    probation: ProbationPolicy = ProbationPolicy()
    capture: CapturePolicy = CapturePolicy()


class DirectorAssigner:
    def __init__(
        self,
        ledger: AssignmentLedger,
        signers: Sequence[Signer],
        publisher: Publisher,
        targets_for: Callable[[ReleaseRef], Sequence[TargetPin]],
        *,
        policies_for: Callable[[ReleaseRef, str | None], AssignmentPolicies] | None = None,
        director_roots: Sequence[bytes] = (),
        validity_s: float = 30 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.signers = list(signers)
        self.publisher = publisher
        self.targets_for = targets_for
        self.policies_for = policies_for or (lambda release, rollout_id: AssignmentPolicies())
        self.director_roots = list(director_roots)
        self.validity_s = validity_s
        self.clock = clock
        self._outstanding: list[Any] = []
        self._lock = threading.Lock()

    def assign(self, device_id: str, release: ReleaseRef, rollout_id: str, *, rollback: bool = False) -> int:
        now = self.clock()
        latest = self.ledger.latest(device_id)
        fresh = latest is not None and latest.expires_at - now > self.validity_s / 2
        if (latest is not None and fresh and (latest.release, latest.rollout_id) == (release, rollout_id)
                and signed_as_rollback(latest.payload) == rollback):
            self._publish(device_id, latest.payload)
            return latest.version
        version = (latest.version if latest is not None else 0) + 1
        policies = self.policies_for(release, rollout_id)
        if rollback:
            policies = dataclasses.replace(policies, gate=dataclasses.replace(policies.gate, max_accuracy_drop=None))
        issued = datetime.fromtimestamp(int(now), tz=timezone.utc)
        assignment = Assignment(
            device_id=device_id, version=version, issued_at=issued,
            expires_at=issued + timedelta(seconds=self.validity_s), release=release,
            targets=tuple(self.targets_for(release)), gate=policies.gate, probation=policies.probation,
            capture=policies.capture, rollout_id=rollout_id,
        )
        payload = sign_envelope(assignment, self.signers, self.director_roots)
        entry = LedgerEntry(version, release, rollout_id, assignment.expires_at.timestamp(), payload)
        self.ledger.record(device_id, entry)  # persist, then publish
        self._publish(device_id, payload)
        return version

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait for the broker's acknowledgement of everything published; raises RolloutError on timeout."""
        with self._lock:
            pending, self._outstanding = self._outstanding, []
        deadline = time.monotonic() + timeout_s
        for info in pending:
            while not info.is_published():
                if time.monotonic() > deadline:
                    with self._lock:
                        self._outstanding.extend(p for p in pending if not p.is_published())
                    raise RolloutError(f"broker did not acknowledge assignments within {timeout_s} s")
                time.sleep(0.002)

    def _publish(self, device_id: str, payload: bytes) -> None:
        info = self.publisher.publish_assignment(device_id, payload)
        with self._lock:
            self._outstanding.append(info)


def signed_as_rollback(payload: bytes) -> bool:
    """Whether a stored envelope waived the accuracy-drop check (the ledger keeps no separate flag)."""
    try:
        gate = json.loads(payload)["signed"].get("gate", {})
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return isinstance(gate, dict) and "max_accuracy_drop" in gate and gate["max_accuracy_drop"] is None


class FileAssignmentLedger:
    """One small JSON file per device, written atomically; for lab controllers and tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def latest(self, device_id: str) -> LedgerEntry | None:
        try:
            raw = json.loads(self._path(device_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise RolloutError(f"assignment ledger entry of {device_id} is unreadable: {e}") from e
        return LedgerEntry(raw["version"], ReleaseRef(**raw["release"]), raw["rollout_id"], raw["expires_at"],
                           base64.b64decode(raw["payload"]))

    def record(self, device_id: str, entry: LedgerEntry) -> None:
        with self._lock:
            latest = self.latest(device_id)
            if latest is not None and entry.version <= latest.version:
                raise RolloutError(f"assignment version {entry.version} for {device_id} is not above "
                                   f"the recorded {latest.version}")
            path = self._path(device_id)
            tmp = path.with_name(path.name + ".tmp")
            body = {"version": entry.version, "release": {"model": entry.release.model,
                                                          "version": entry.release.version},
                    "rollout_id": entry.rollout_id, "expires_at": entry.expires_at,
                    "payload": base64.b64encode(entry.payload).decode()}
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(body, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

    def _path(self, device_id: str) -> Path:
        if not _DEVICE_RE.match(device_id):
            raise RolloutError(f"device id {device_id!r} is not valid")
        return self.root / f"{device_id}.json"
