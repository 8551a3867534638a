"""The image-repository writer: publishes model targets as a TUF repository into an ObjectStore.

Layout in the store (consistent snapshots: every version of snapshot/targets keeps its own file, so a
device reading while the controller publishes always sees one coherent set):

```
metadata/1.root.json, 2.root.json, ...   every root version (devices walk the chain)
metadata/<N>.targets.json                signed by the release key (`targets` role)
metadata/<N>.snapshot.json               signed online (`snapshot` role)
metadata/timestamp.json                  signed online, short expiry; the only file rewritten in place
targets/models/<model>/<version>/<sha256>.<variant-id>   target bytes, hash-prefixed
```

Publishing a release writes the target bytes first, then targets, snapshot and timestamp metadata, in
that order: a reader that sees the new timestamp can always fetch everything it names. There is one
writer per repository (the controller serialises calls); this class keeps no state between calls other
than the store itself, so a restarted controller continues where it left off.

Deliberately not here: key storage (`manifests/keyring.py`) and anything device-side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp

from manifests.custom_fields import check_custom, normalize_custom
from manifests.errors import RepositoryWriteError, TrustError
from manifests.keyring import Keyring
from manifests.store import ObjectStore
from manifests.target_names import METADATA_PREFIX, target_store_key, validate_target_name
from manifests.verify import RELEASE_FLOORS_FIELD, SignedTarget, parse_release_floors


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each online-signed role stays valid. Timestamp must be refreshed well within its expiry."""

    targets_s: float = 90 * 86400.0
    snapshot_s: float = 7 * 86400.0
    timestamp_s: float = 86400.0


@dataclass(frozen=True)
class NewTarget:
    """A target to publish: its name, its bytes and its custom fields."""

    name: str
    data: bytes
    custom: Mapping[str, Any]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class ImageRepository:
    """Writes and refreshes the TUF image repository held in `store`, signing with `keyring`'s keys."""

    def __init__(self, store: ObjectStore, keyring: Keyring, expiry: ExpiryPolicy | None = None) -> None:
        self.store = store
        self.keyring = keyring
        self.expiry = expiry or ExpiryPolicy()

    # --- reading the current state -------------------------------------------------------------

    def _read(self, name: str) -> bytes:
        key = METADATA_PREFIX + name
        if not self.store.exists(key):
            raise RepositoryWriteError(f"{key} is missing from the store; run initialize() first")
        return self.store.read_bytes(key)

    def timestamp(self) -> Metadata[Timestamp]:
        return Metadata[Timestamp].from_bytes(self._read("timestamp.json"))

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return Metadata[Snapshot].from_bytes(self._read(f"{version}.snapshot.json"))

    def targets(self) -> Metadata[Targets]:
        version = self.snapshot().signed.meta["targets.json"].version
        return Metadata[Targets].from_bytes(self._read(f"{version}.targets.json"))

    def signed_targets(self) -> tuple[SignedTarget, ...]:
        """Every target currently published, as a device would see it after verification."""
        return tuple(
            SignedTarget(t.path, t.length, t.hashes["sha256"], dict(t.unrecognized_fields.get("custom", {})))
            for t in self.targets().signed.targets.values()
        )

    # --- writing -------------------------------------------------------------------------------

    def _write(self, name: str, md: Metadata[Any], role: str) -> bytes:
        md.signatures.clear()
        for signer in self.keyring.signers(role):
            md.sign(signer, append=True)
        data = md.to_bytes()
        self.store.write_bytes(METADATA_PREFIX + name, data)
        return data

    def publish_roots(self) -> int:
        """Publish every root version from the keyring that the store lacks; returns the newest version."""
        history = self.keyring.root_history("image")
        for version, data in enumerate(history, start=1):
            key = f"{METADATA_PREFIX}{version}.root.json"
            if not self.store.exists(key):
                self.store.write_bytes(key, data)
        return len(history)

    def initialize(self) -> None:
        """Create an empty repository (idempotent: an existing one is left as it is)."""
        self.publish_roots()
        if self.store.exists(METADATA_PREFIX + "timestamp.json"):
            return
        targets = Metadata(Targets(expires=_now() + timedelta(seconds=self.expiry.targets_s)))
        data = self._write("1.targets.json", targets, "targets")
        self._publish_snapshot(1, data)

    def add_targets(self, new: Iterable[NewTarget]) -> tuple[SignedTarget, ...]:
        """Publish targets in one new targets version (one release = one version), then snapshot/timestamp.

        A name that is already published is replaced (its old bytes stay in the store under their own
        hash-prefixed key, so devices mid-download are not disturbed).
        """
        items = list(new)
        if not items:
            raise RepositoryWriteError("add_targets needs at least one target")
        current = self.targets()
        added: list[SignedTarget] = []
        for item in items:
            custom = normalize_custom(item.custom)
            try:
                validate_target_name(item.name)
                check_custom(item.name, custom)
            except TrustError as e:
                raise RepositoryWriteError(f"refusing target {item.name!r}: {e}") from e
            sha256 = hashlib.sha256(item.data).hexdigest()
            key = target_store_key(item.name, sha256)
            if not self.store.exists(key):
                self.store.write_bytes(key, item.data)
            current.signed.targets[item.name] = TargetFile(
                len(item.data), {"sha256": sha256}, item.name, unrecognized_fields={"custom": custom}
            )
            added.append(SignedTarget(item.name, len(item.data), sha256, custom))
        self._bump_targets(current)
        return tuple(added)

    def add_target(self, name: str, data: bytes, custom: Mapping[str, Any]) -> SignedTarget:
        return self.add_targets([NewTarget(name, data, custom)])[0]

    def remove_targets(self, names: Iterable[str]) -> None:
        """Stop listing targets (withdrawn releases); bytes stay until the store is garbage-collected."""
        current = self.targets()
        for name in names:
            if current.signed.targets.pop(name, None) is None:
                raise RepositoryWriteError(f"target {name!r} is not published")
        self._bump_targets(current)

    def release_floors(self) -> dict[str, int]:
        """Per-model minimum release_counter currently signed (see `set_release_floor`)."""
        return parse_release_floors(self.targets().signed.unrecognized_fields.get(RELEASE_FLOORS_FIELD, {}))

    def set_release_floor(self, model: str, release_counter: int) -> None:
        """Block every release of `model` below `release_counter` on every device, signed by the release key.

        Devices refuse such assignments from their next verification on and persist the floor with the
        next assignment they accept. Never lowered: a device keeps the highest floor it has seen.
        """
        current = self.targets()
        floors = self.release_floors()
        if release_counter < floors.get(model, 0):
            raise RepositoryWriteError(
                f"release floor of {model!r} is {floors[model]}; floors are never lowered (devices keep theirs)"
            )
        floors[model] = release_counter
        try:
            floors = parse_release_floors(floors)
        except TrustError as e:
            raise RepositoryWriteError(f"refusing release floor: {e}") from e
        current.signed.unrecognized_fields[RELEASE_FLOORS_FIELD] = floors
        self._bump_targets(current)

    def _bump_targets(self, current: Metadata[Targets]) -> None:
        current.signed.version += 1
        current.signed.expires = _now() + timedelta(seconds=self.expiry.targets_s)
        data = self._write(f"{current.signed.version}.targets.json", current, "targets")
        snapshot_version = self.snapshot().signed.version + 1
        self._publish_snapshot(snapshot_version, data, targets_version=current.signed.version)

    def _publish_snapshot(self, version: int, targets_data: bytes, targets_version: int = 1) -> None:
        meta = MetaFile(
            targets_version, len(targets_data), {"sha256": hashlib.sha256(targets_data).hexdigest()}
        )
        snapshot = Metadata(
            Snapshot(
                version=version,
                expires=_now() + timedelta(seconds=self.expiry.snapshot_s),
                meta={"targets.json": meta},
            )
        )
        data = self._write(f"{version}.snapshot.json", snapshot, "snapshot")
        self._publish_timestamp(version, data)

    def _publish_timestamp(self, snapshot_version: int, snapshot_data: bytes) -> None:
        previous = (
            self.timestamp().signed.version if self.store.exists(METADATA_PREFIX + "timestamp.json") else 0
        )
        meta = MetaFile(
            snapshot_version, len(snapshot_data), {"sha256": hashlib.sha256(snapshot_data).hexdigest()}
        )
        timestamp = Metadata(
            Timestamp(
                version=previous + 1,
                expires=_now() + timedelta(seconds=self.expiry.timestamp_s),
                snapshot_meta=meta,
            )
        )
        self._write("timestamp.json", timestamp, "timestamp")

    def refresh_snapshot(self) -> None:
        """Re-sign snapshot (and timestamp) with fresh expiry; also publishes any newer root."""
        self.publish_roots()
        targets = self.targets()
        self._publish_snapshot(
            self.snapshot().signed.version + 1,
            self._read(f"{targets.signed.version}.targets.json"),
            targets_version=targets.signed.version,
        )

    def refresh_timestamp(self) -> None:
        """Re-sign timestamp with fresh expiry (run periodically; also after rotating the timestamp key)."""
        self.publish_roots()
        snapshot_version = self.timestamp().signed.snapshot_meta.version
        self._publish_timestamp(snapshot_version, self._read(f"{snapshot_version}.snapshot.json"))

    def expiring_within(self, horizon_s: float, now: datetime | None = None) -> list[str]:
        """Roles whose current metadata expires within `horizon_s` (what a refresh loop should re-sign)."""
        at = (now or _now()) + timedelta(seconds=horizon_s)
        out = []
        for role, md in (
            ("timestamp", self.timestamp()),
            ("snapshot", self.snapshot()),
            ("targets", self.targets()),
        ):
            if md.signed.is_expired(at):
                out.append(role)
        return out
