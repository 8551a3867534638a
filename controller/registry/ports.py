"""The registry's ports: the build function and the image-repository publisher it signs through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tuf.api.metadata import Metadata, Targets

from controller.build import BuildReport
from manifests.repository import NewTarget

BuildFn = Callable[..., BuildReport]


class Publisher(Protocol):
    """Signs targets into the image repository (`registry.repository.RepositoryPublisher`)."""

    def publish(self, targets: list[NewTarget]) -> bool:
        """True when signed and published; False when staged for the offline release key."""
        ...

    def pending(self, staged: list[tuple[str, int, str, dict[str, Any]]]) -> Metadata[Targets]:
        """The unsigned next targets metadata with `staged` added."""
        ...

    def import_signed(self, data: bytes) -> Metadata[Targets]:
        """Check and publish targets metadata signed elsewhere."""
        ...
