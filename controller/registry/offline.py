"""The offline release-key workflow: targets metadata signed away from the controller.

When the controller's keyring holds no private `targets` key (the release key lives on an offline
machine or a hardware token), a finished build cannot be signed here. Instead:

    build done ─▶ target bytes staged in the repository store, release `awaiting_signature`
    GET  /api/v1/repository/targets/pending   the next targets metadata, unsigned (every awaiting release)
    (offline)  edgefleet repository sign pending.json --keys DIR > signed.json
    PUT  /api/v1/repository/targets           signed metadata in; checked against the published root's
                                              `targets` keys and threshold, version = current + 1, every
                                              listed target's bytes present with the signed hash and length
               ─▶ snapshot + timestamp re-signed online; the releases it covers become `published`

Staged bytes are harmless before signing: devices trust only what signed metadata lists. The checks
here are the repository's own (python-tuf's `verify_delegate`), not a second opinion on the signer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, TargetFile, Targets

from controller.errors import Conflict, InvalidInput
from manifests.custom_fields import check_custom, normalize_custom
from manifests.errors import TrustError
from manifests.repository import ImageRepository, NewTarget
from manifests.target_names import METADATA_PREFIX, target_store_key, validate_target_name

MAX_TARGETS_METADATA_BYTES = 16 * 1024 * 1024


class OfflineSigningRepository(ImageRepository):
    """The image repository writer plus staging and import of externally signed targets metadata."""

    def stage(self, new: Iterable[NewTarget]) -> None:
        """Write target bytes under their hash-prefixed keys; nothing is listed or signed yet."""
        for item in new:
            custom = normalize_custom(item.custom)
            try:
                validate_target_name(item.name)
                check_custom(item.name, custom)
            except TrustError as e:
                raise InvalidInput(f"refusing target {item.name!r}: {e}") from e
            key = target_store_key(item.name, hashlib.sha256(item.data).hexdigest())
            if not self.store.exists(key):
                self.store.write_bytes(key, item.data)

    def pending(self, staged: Iterable[tuple[str, int, str, dict[str, object]]]) -> Metadata[Targets]:
        """The next targets version: what is published now plus `(name, length, sha256, custom)` items."""
        md = self.targets()
        md.signatures.clear()
        for name, length, sha256, custom in staged:
            md.signed.targets[name] = TargetFile(
                length, {"sha256": sha256}, name, unrecognized_fields={"custom": normalize_custom(custom)}
            )
        md.signed.version += 1
        md.signed.expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(
            seconds=self.expiry.targets_s
        )
        return md

    def import_signed(self, data: bytes) -> Metadata[Targets]:
        """Accept signed targets metadata (see the module docstring for the checks), then publish it."""
        if len(data) > MAX_TARGETS_METADATA_BYTES:
            raise InvalidInput(f"targets metadata is {len(data)} bytes; at most {MAX_TARGETS_METADATA_BYTES}")
        try:
            md = Metadata[Targets].from_bytes(data)
        except Exception as e:  # python-tuf raises several types for malformed input
            raise InvalidInput(f"not TUF targets metadata: {e}") from e
        current = self.targets().signed.version
        if md.signed.version != current + 1:
            raise Conflict(f"expected targets version {current + 1}, got {md.signed.version}")
        if md.signed.is_expired(datetime.now(timezone.utc)):
            raise InvalidInput(f"targets metadata expired at {md.signed.expires.isoformat()}")
        root_version = self.publish_roots()
        root = Metadata[Root].from_bytes(self._read(f"{root_version}.root.json"))
        try:
            root.signed.verify_delegate(Targets.type, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            raise InvalidInput(f"targets metadata is not signed by the release key threshold: {e}") from e
        for name, target in md.signed.targets.items():
            try:
                validate_target_name(name)
                check_custom(name, target.unrecognized_fields.get("custom", {}))
            except TrustError as e:
                raise InvalidInput(f"target {name!r}: {e}") from e
            key = target_store_key(name, target.hashes["sha256"])
            if not self.store.exists(key):
                raise InvalidInput(f"target {name!r} lists bytes ({key}) this repository does not hold")
            stored = self.store.read_bytes(key)
            if len(stored) != target.length or hashlib.sha256(stored).hexdigest() != target.hashes["sha256"]:
                raise InvalidInput(f"target {name!r}: stored bytes differ from the signed length/hash")
        version = md.signed.version
        self.store.write_bytes(f"{METADATA_PREFIX}{version}.targets.json", data)
        self._publish_snapshot(self.snapshot().signed.version + 1, data, targets_version=version)
        return md
