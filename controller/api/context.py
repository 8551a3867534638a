"""What the routes share for the lifetime of one app: settings, database, stores, CA, workers.

Built by `create_app(settings)` and kept on `app.state.ctx`; dependencies hand pieces of it to routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.enrollment.ca import FleetCA
from controller.enrollment.ratelimit import RateLimiter
from controller.settings import Settings

if TYPE_CHECKING:
    from controller.artifacts import ArtifactStore
    from controller.enrollment.trust import TrustRoots
    from controller.registry.service import ModelRegistry


@dataclass
class ControllerContext:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    ca: FleetCA
    enrollment_limiter: RateLimiter
    store: ArtifactStore
    trust_roots: TrustRoots | None
    registry: ModelRegistry
    extras: dict[str, Any] = field(default_factory=dict)  # optional services (bridge, telemetry, ...)
