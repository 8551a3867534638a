"""The pure core of assignment verification: bytes and trusted state in, a verified plan or TrustError out.

Nothing here touches files, sockets or the clock: time is an argument and the trusted state is a value.
`manifests/client.py` is the thin shell that loads the persisted state, drives python-tuf's Updater
against the image repository, calls these functions and persists the new state atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from manifests.assignment import Assignment
from manifests.target_names import target_store_key


@dataclass(frozen=True)
class SignedTarget:
    """One target as signed by the image repository's targets role (never as the director described it).

    `custom` holds kind ("variant" | "golden"), runtime, precision, arch, accelerator, runtime_version,
    release_counter, model, version and the build-time accuracy.
    """

    name: str
    length: int
    sha256: str
    custom: Mapping[str, Any]

    @property
    def store_key(self) -> str:
        """Where the bytes live in the artifact store (consistent-snapshot, hash-prefixed name)."""
        return target_store_key(self.name, self.sha256)

    @property
    def kind(self) -> str:
        return str(self.custom.get("kind", "variant"))


@dataclass(frozen=True)
class VerifiedPlan:
    """An assignment whose every target is signed by both the director and the image repository."""

    assignment: Assignment
    targets: tuple[SignedTarget, ...]

    @property
    def variants(self) -> tuple[SignedTarget, ...]:
        return tuple(t for t in self.targets if t.kind == "variant")

    @property
    def golden(self) -> SignedTarget | None:
        return next((t for t in self.targets if t.kind == "golden"), None)
