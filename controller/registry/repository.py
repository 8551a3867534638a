"""The controller's view of the TUF image repository and of its keyring.

The repository lives in the artifact store under `repository/` (served publicly at
`/artifacts/repository/...`: every byte there is signed, so its integrity never depends on the
transport). Keys come from the keyring folder made by `edgefleet keys init` (`settings.keys_dir`).

    KeyringTrustRoots     the roots a device pins at enrollment (latest image root + director root)
    RepositoryPublisher   signs a release's targets into the repository with the online release key,
                          or stages them for the offline release key (`offline.py`) when the
                          keyring holds no private `targets` key; signs per-model release floors
                          (blocking known-bad releases) with the same key, under the same lock
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from tuf.api.metadata import Metadata, Targets

from controller.artifacts import ArtifactStore
from controller.errors import Conflict, Unavailable
from controller.registry.offline import OfflineSigningRepository
from controller.settings import Settings
from manifests.errors import KeyringError, ManifestError, RepositoryWriteError
from manifests.keyring import Keyring
from manifests.repository import NewTarget

REPOSITORY_PREFIX = "repository/"


class PrefixedStore:
    """`write_bytes/read_bytes/exists` of an ArtifactStore, under a fixed key prefix."""

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self._store = store
        self.prefix = prefix

    def write_bytes(self, key: str, data: bytes) -> None:
        self._store.write_bytes(self.prefix + key, data)

    def read_bytes(self, key: str) -> bytes:
        return self._store.read_bytes(self.prefix + key)

    def exists(self, key: str) -> bool:
        return self._store.exists(self.prefix + key)


def _open_keyring(settings: Settings) -> Keyring | None:
    keys_dir = settings.resolved_keys_dir
    if not (keys_dir / "image-root").is_dir():
        return None
    return Keyring(keys_dir)


class KeyringTrustRoots:
    """The newest image root and director root from the keyring (devices walk forward from there)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _latest(self, kind: str) -> dict[str, Any]:
        keyring = _open_keyring(self._settings)
        if keyring is None:
            raise Unavailable(
                f"no keyring at {self._settings.resolved_keys_dir}: run `edgefleet keys init` there first"
            )
        try:
            history = keyring.root_history(kind)
        except ManifestError as e:
            raise Unavailable(f"keyring at {self._settings.resolved_keys_dir} is unreadable: {e}") from e
        value = json.loads(history[-1])
        if not isinstance(value, dict):
            raise Unavailable(f"the {kind} root in the keyring is not a JSON object")
        return value

    def image_repository_root(self) -> dict[str, Any]:
        return self._latest("image")

    def director_root(self) -> dict[str, Any]:
        return self._latest("director")


class RepositoryPublisher:
    """Publishes targets with the keyring's online keys; calls are serialised (one writer per repository)."""

    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        self._settings = settings
        self._store = PrefixedStore(store, REPOSITORY_PREFIX)
        self.lock = threading.Lock()

    def repository(self) -> OfflineSigningRepository:
        keyring = _open_keyring(self._settings)
        if keyring is None:
            raise Unavailable(
                f"no keyring at {self._settings.resolved_keys_dir}: cannot sign targets; "
                "run `edgefleet keys init` there first"
            )
        repo = OfflineSigningRepository(self._store, keyring)
        repo.initialize()
        return repo

    def has_release_key(self) -> bool:
        """Whether the controller can sign targets itself (else the offline workflow applies)."""
        keyring = _open_keyring(self._settings)
        if keyring is None:
            return False
        try:
            return bool(keyring.signers("targets"))
        except KeyringError:
            return False

    def publish(self, targets: Sequence[NewTarget]) -> bool:
        """Sign and publish `targets`; True when done, False when staged for the offline release key."""
        with self.lock:
            repo = self.repository()
            if self.has_release_key():
                repo.add_targets(targets)
                return True
            repo.stage(targets)
            return False

    def pending(self, staged: Sequence[tuple[str, int, str, dict[str, Any]]]) -> Metadata[Targets]:
        with self.lock:
            return self.repository().pending(staged)

    def import_signed(self, data: bytes) -> Metadata[Targets]:
        with self.lock:
            return self.repository().import_signed(data)

    def withdraw(self, names: Sequence[str]) -> None:
        with self.lock:
            self.repository().remove_targets(names)

    def release_floors(self) -> dict[str, int]:
        """Per-model minimum release counters signed in the current targets metadata."""
        with self.lock:
            return self.repository().release_floors()

    def set_release_floor(self, model: str, release_counter: int) -> int:
        """Sign `release_counter` as `model`'s floor into a new targets version; returns that version.

        The floor lives in the targets metadata, so only the release key can sign it. When that key is
        offline this controller cannot, and says where it has to happen instead of staging anything.
        """
        with self.lock:
            if not self.has_release_key():
                raise Conflict(
                    f"the release key is offline (the keyring at {self._settings.resolved_keys_dir} holds no "
                    f"private targets key), so this controller cannot sign a release floor for {model!r}. "
                    "Sign it where the release key is: ImageRepository(store, keyring)"
                    f".set_release_floor({model!r}, {release_counter}) over this repository's store "
                    "(the controller then serves the new targets metadata)",
                    details={"model": model, "release_floor": release_counter, "release_key": "offline"},
                )
            repo = self.repository()
            try:
                repo.set_release_floor(model, release_counter)
            except RepositoryWriteError as e:
                raise Conflict(str(e), details={"model": model, "release_floor": release_counter}) from e
            return int(repo.targets().signed.version)

    def published_names(self) -> set[str]:
        with self.lock:
            return {t.name for t in self.repository().signed_targets()}


def default_trust_roots(settings: Settings, store: ArtifactStore) -> KeyringTrustRoots:
    return KeyringTrustRoots(settings)


def default_publisher(settings: Settings, store: ArtifactStore) -> RepositoryPublisher:
    return RepositoryPublisher(settings, store)
