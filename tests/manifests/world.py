"""A small trust-chain world for tests: keyring, local-folder image repository, one enrolled device.

Helpers build validly signed assignments so each adversarial test changes exactly one thing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, TargetFile, Targets, Timestamp

from manifests import assignment as A
from manifests import director
from manifests.client import ImageRepoSource, TrustClient, TrustLimits
from manifests.keyring import Keyring
from manifests.repository import ExpiryPolicy, ImageRepository, NewTarget
from manifests.store import LocalFolderStore, StoreFetcher
from manifests.verify import SignedTarget

DEVICE_ID = "edge-001"


def now_s() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class FakeClock:
    """The device clock, settable (a reset to 1970 is one assignment away)."""

    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def variant_custom(model: str, version: str, counter: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "variant",
        "model": model,
        "version": version,
        "release_counter": counter,
        "runtime": "onnxruntime",
        "precision": "fp32",
        "arch": "x86_64",
        "accuracy": "0.970000",
        **extra,
    }


class World:
    def __init__(
        self,
        tmp: Path,
        *,
        director_keys: int = 1,
        director_threshold: int = 1,
        expiry: ExpiryPolicy | None = None,
        limits: TrustLimits | None = None,
    ) -> None:
        self.tmp = tmp
        self.keys = Keyring.create(
            tmp / "keys", director_keys=director_keys, director_threshold=director_threshold
        )
        self.store = LocalFolderStore(tmp / "repo")
        self.repo = ImageRepository(self.store, self.keys, expiry)
        self.repo.initialize()
        self.state_path = tmp / "device" / "trust.json"
        self.clock = FakeClock(now_s())
        TrustClient.enroll(
            self.state_path,
            DEVICE_ID,
            self.keys.root_history("director")[0],
            self.keys.root_history("image")[0],
            now=self.clock(),
        )
        self.client = TrustClient(
            self.state_path,
            ImageRepoSource("store:///metadata/", StoreFetcher(self.store)),
            limits,
            clock=self.clock,
        )
        self.next_version = 1

    def publish(
        self, model: str = "digits", version: str = "1", counter: int = 1, payload: bytes | None = None
    ) -> tuple[SignedTarget, ...]:
        body = payload or hashlib.sha256(f"{model}/{version}".encode()).digest() * 64
        return self.repo.add_targets(
            [
                NewTarget(
                    f"models/{model}/{version}/ort-fp32.onnx", body, variant_custom(model, version, counter)
                ),
                NewTarget(
                    f"models/{model}/{version}/golden.npz",
                    body[:100],
                    {"kind": "golden", "model": model, "version": version, "release_counter": counter},
                ),
            ]
        )

    def assignment(self, targets: Sequence[SignedTarget], **changes: Any) -> A.Assignment:
        first = targets[0]
        _, model, version, _ = first.name.split("/")
        issued = self.clock()
        a = A.Assignment(
            device_id=DEVICE_ID,
            version=self.next_version,
            issued_at=issued,
            expires_at=issued + timedelta(days=7),
            release=A.ReleaseRef(model, version),
            targets=tuple(A.TargetPin(t.name, t.length, t.sha256) for t in targets),
            rollout_id="r-1",
        )
        self.next_version += 1
        return replace(a, **changes)

    def sign(self, a: A.Assignment, signers: Sequence[Signer] | None = None) -> bytes:
        return director.sign_envelope(
            a,
            list(signers) if signers is not None else self.keys.signers("director"),
            self.keys.root_history("director")[1:],
        )

    def sign_body(self, body: dict[str, Any], signers: Sequence[Signer] | None = None) -> bytes:
        return director.sign_body(
            body,
            list(signers) if signers is not None else self.keys.signers("director"),
            self.keys.root_history("director")[1:],
        )

    def accept(self, targets: Sequence[SignedTarget] | None = None, **changes: Any) -> None:
        """Verify one good assignment so the device has trusted image metadata and a version."""
        self.client.verify(self.sign(self.assignment(targets or self.publish(), **changes)))

    def state_bytes(self) -> bytes:
        return self.state_path.read_bytes()

    def state_folder(self) -> list[str]:
        return sorted(p.name for p in self.state_path.parent.iterdir())

    def write_timestamp(
        self,
        version: int,
        *,
        signers: Sequence[Signer] | None = None,
        expires: datetime | None = None,
        pad_bytes: int = 0,
    ) -> None:
        """Publish a hand-made timestamp (an attacker with a key, or a repository gone stale)."""
        current = self.repo.timestamp().signed
        ts = Timestamp(
            version=version,
            expires=expires or now_s() + timedelta(days=1),
            snapshot_meta=current.snapshot_meta,
            unrecognized_fields={"pad": "x" * pad_bytes} if pad_bytes else None,
        )
        md = Metadata(ts)
        for s in signers if signers is not None else self.keys.signers("timestamp"):
            md.sign(s, append=True)
        self.store.write_bytes("metadata/timestamp.json", md.to_bytes())

    def publish_targets_metadata(self, md: Metadata[Targets]) -> None:
        """Publish already-signed targets metadata as the next version (a compromised or buggy signer)."""
        data = md.to_bytes()
        self.store.write_bytes(f"metadata/{md.signed.version}.targets.json", data)
        self.repo._publish_snapshot(self.repo.snapshot().signed.version + 1, data, md.signed.version)

    def publish_by_hand(self, name: str, data: bytes, custom: dict[str, Any]) -> None:
        """Sign a target with the real release key, bypassing the writer's own checks."""
        current = self.repo.targets()
        sha = hashlib.sha256(data).hexdigest()
        current.signed.targets[name] = TargetFile(
            len(data), {"sha256": sha}, name, unrecognized_fields={"custom": custom}
        )
        current.signed.version += 1
        current.signatures.clear()
        for s in self.keys.signers("targets"):
            current.sign(s, append=True)
        self.publish_targets_metadata(current)
