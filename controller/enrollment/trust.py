"""Where enrollment gets the trust anchors it hands to a new device.

A device pins two roots at enrollment: the image repository's `root.json` (TUF) and the director's
root (the keys that sign assignments). They are handed over on the same authenticated exchange that
issues the device certificate, so a device never learns its roots from the network it is about to
distrust. `TrustRoots` is the port; the app wires the implementation that reads the controller's
repository and keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from controller.errors import Unavailable


class TrustRoots(Protocol):
    def image_repository_root(self) -> dict[str, Any]: ...

    def director_root(self) -> dict[str, Any]: ...


class FileTrustRoots:
    """Reads both roots from JSON files (the repository's current root and the director root)."""

    def __init__(self, image_root_path: Path, director_root_path: Path) -> None:
        self._image_root_path = image_root_path
        self._director_root_path = director_root_path

    @staticmethod
    def _load(path: Path, what: str) -> dict[str, Any]:
        try:
            value = json.loads(path.read_bytes())
        except FileNotFoundError as e:
            raise Unavailable(f"{what} {path} does not exist: run `edgefleet keys init` first") from e
        except (OSError, ValueError) as e:
            raise Unavailable(f"{what} {path} is unreadable: {e}") from e
        if not isinstance(value, dict):
            raise Unavailable(f"{what} {path} is not a JSON object")
        return value

    def image_repository_root(self) -> dict[str, Any]:
        return self._load(self._image_root_path, "image repository root")

    def director_root(self) -> dict[str, Any]:
        return self._load(self._director_root_path, "director root")
