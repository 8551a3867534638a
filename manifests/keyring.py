"""Signing keys on disk and the two roots of trust they anchor.

A keyring directory holds:

```
DIR/
  private/<keyid>.pem        Ed25519 private keys, PKCS#8 PEM, mode 0600 (folder 0700)
  retired/<keyid>.pem        keys replaced by a rotation, kept for audit, never loaded for signing
  image-root/<N>.root.json   the image repository's root metadata history (TUF), N = 1, 2, ...
  director-root/<N>.root.json the director's root metadata history
```

| root          | role       | signs                                   | default keys / threshold |
|---------------|------------|-----------------------------------------|--------------------------|
| image root    | `root`     | image root versions (offline)           | 3 / 2                    |
|               | `targets`  | released models (release key)           | 1 / 1                    |
|               | `snapshot` | snapshot metadata (online)              | 1 / 1                    |
|               | `timestamp`| timestamp metadata (online)             | 1 / 1                    |
| director root | `root`     | director root versions (`director-root`)| 1 / 1                    |
|               | `targets`  | device assignments (`director`, online) | 1 / 1                    |

Both roots are TUF `Root` documents, so rotation is TUF's: version N+1 must be signed by a threshold of
version N's root keys and by a threshold of its own. Devices pin version 1 (or any later one) at
enrollment and walk the chain forward. The folder is the only state: there is no cache to go stale.
This module deliberately does not publish anything; `manifests/repository.py` does that.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key
from tuf.api.metadata import Metadata, Root

from manifests.errors import KeyringError

IMAGE_ROLES = ("root", "targets", "snapshot", "timestamp")
DIRECTOR_ROLES = ("director-root", "director")
ALL_ROLES = IMAGE_ROLES + DIRECTOR_ROLES
ROOT_EXPIRY = timedelta(days=365)
_ROOT_DIRS = {"image": "image-root", "director": "director-root"}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _write_private(folder: Path, signer: CryptoSigner) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{signer.public_key.keyid}.pem"
    # O_EXCL + mode at creation: the key is never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
        f.flush()
        os.fsync(f.fileno())


def _write_root(folder: Path, md: Metadata[Root]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{md.signed.version}.root.json"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(md.to_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _new_signers(count: int) -> list[CryptoSigner]:
    return [CryptoSigner.generate_ed25519() for _ in range(count)]


class Keyring:
    """A keyring folder: loads root histories and private keys, and rotates roles."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        for sub in _ROOT_DIRS.values():
            if not (self.path / sub / "1.root.json").is_file():
                raise KeyringError(
                    f"{self.path} is not a keyring: {sub}/1.root.json is missing "
                    "(create one with `edgefleet keys init`)"
                )

    # --- creation ----------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path | str,
        *,
        root_keys: int = 3,
        root_threshold: int = 2,
        director_root_keys: int = 1,
        director_root_threshold: int = 1,
        director_keys: int = 1,
        director_threshold: int = 1,
    ) -> Keyring:
        """Generate every key and version 1 of both roots. Refuses a folder that already holds keys."""
        path = Path(path)
        for count, threshold, what in (
            (root_keys, root_threshold, "root"),
            (director_root_keys, director_root_threshold, "director-root"),
            (director_keys, director_threshold, "director"),
        ):
            if not 1 <= threshold <= count:
                raise KeyringError(f"{what}: threshold must be between 1 and {count}, got {threshold}")
        if (path / "private").exists() or (path / "image-root").exists():
            raise KeyringError(f"{path} already holds a keyring; refusing to overwrite keys")
        path.mkdir(parents=True, exist_ok=True)
        image: dict[str, tuple[list[CryptoSigner], int]] = {
            "root": (_new_signers(root_keys), root_threshold),
            "targets": (_new_signers(1), 1),
            "snapshot": (_new_signers(1), 1),
            "timestamp": (_new_signers(1), 1),
        }
        director: dict[str, tuple[list[CryptoSigner], int]] = {
            "root": (_new_signers(director_root_keys), director_root_threshold),
            "targets": (_new_signers(director_keys), director_threshold),
        }
        for roles, kind in ((image, "image"), (director, "director")):
            root = Root(expires=_now() + ROOT_EXPIRY, consistent_snapshot=kind == "image")
            for role, (signers, threshold) in roles.items():
                for s in signers:
                    root.add_key(s.public_key, role)
                    _write_private(path / "private", s)
                root.roles[role].threshold = threshold
            md = Metadata(root)
            for s in roles["root"][0]:
                md.sign(s, append=True)
            _write_root(path / _ROOT_DIRS[kind], md)
        return cls(path)

    # --- reading -----------------------------------------------------------------------------------

    def root_history(self, kind: str) -> list[bytes]:
        """All versions of the `kind` ("image" | "director") root, oldest first, as published bytes."""
        folder = self.path / _ROOT_DIRS[kind]
        out: list[bytes] = []
        version = 1
        while (folder / f"{version}.root.json").is_file():
            out.append((folder / f"{version}.root.json").read_bytes())
            version += 1
        return out

    def root(self, kind: str) -> Metadata[Root]:
        return Metadata[Root].from_bytes(self.root_history(kind)[-1])

    def signers(self, role: str) -> list[CryptoSigner]:
        """Private keys of `role` (see ALL_ROLES) that the current root trusts, as signers."""
        kind, tuf_role = _locate(role)
        root = self.root(kind).signed
        keys = [root.get_key(k) for k in root.roles[tuf_role].keyids]
        return [self._load(k) for k in keys]

    def _load(self, key: Key) -> CryptoSigner:
        path = self.path / "private" / f"{key.keyid}.pem"
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyringError(f"{path} is readable by others (mode {oct(mode & 0o777)}); expected 0600")
            private = load_pem_private_key(path.read_bytes(), password=None)
            return CryptoSigner(private, key)  # type: ignore[arg-type]
        except KeyringError:
            raise
        except FileNotFoundError as e:
            raise KeyringError(f"private key {key.keyid} is not in {path.parent}") from e
        except (OSError, ValueError, TypeError) as e:
            raise KeyringError(f"cannot load private key {path}: {e}") from e

    # --- rotation ----------------------------------------------------------------------------------

    def rotate(self, role: str, *, new_key_count: int | None = None) -> Metadata[Root]:
        """Replace every key of `role` with fresh ones, through a new root version.

        The new version is signed by the current root keys; when the root keys themselves rotate it is
        also signed by the new ones (TUF requires both thresholds). Old private keys move to retired/.
        """
        kind, tuf_role = _locate(role)
        current = self.root(kind)
        old_root_signers = self.signers("root" if kind == "image" else "director-root")
        root = Metadata[Root].from_bytes(current.to_bytes()).signed
        old_keyids = list(root.roles[tuf_role].keyids)
        count = new_key_count or len(old_keyids)
        if root.roles[tuf_role].threshold > count:
            raise KeyringError(f"{role}: {count} keys cannot meet threshold {root.roles[tuf_role].threshold}")
        fresh = _new_signers(count)
        for keyid in old_keyids:
            root.revoke_key(keyid, tuf_role)
        for s in fresh:
            root.add_key(s.public_key, tuf_role)
        root.version += 1
        root.expires = _now() + ROOT_EXPIRY
        md = Metadata(root)
        signers = old_root_signers + (fresh if tuf_role == "root" else [])
        for s in signers:
            md.sign(s, append=True)
        for s in fresh:
            _write_private(self.path / "private", s)
        _write_root(self.path / _ROOT_DIRS[kind], md)
        still_used = {k for r in root.roles.values() for k in r.keyids}
        _retire(self.path, (k for k in old_keyids if k not in still_used))
        return md


def _locate(role: str) -> tuple[str, str]:
    if role in IMAGE_ROLES:
        return "image", role
    if role == "director-root":
        return "director", "root"
    if role == "director":
        return "director", "targets"
    raise KeyringError(f"unknown role {role!r}; expected one of {', '.join(ALL_ROLES)}")


def _retire(path: Path, keyids: Iterable[str]) -> None:
    retired = path / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    for keyid in keyids:
        src = path / "private" / f"{keyid}.pem"
        if src.exists():
            os.replace(src, retired / src.name)
