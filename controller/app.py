"""`create_app(settings)`: the controller's FastAPI application, built from settings at start-up.

    create_app(settings)
      ├── engine + sessions (SQLite WAL | PostgreSQL)      migrations run in the lifespan (optional)
      ├── artifact store (file:// | s3://) + URL signer    served at /artifacts (Range, presigned)
      ├── fleet CA, enrollment rate limiter, trust roots
      ├── model registry + background build worker         started/stopped with the app
      ├── image repository refresher (snapshot/timestamp)  started/stopped with the app
      ├── device liveness sweep                            marks devices silent for device_offline_after_s offline
      ├── MQTT bridge → device registry (optional)         connects in the background, retrying
      ├── rollout engine (with the bridge and a director key) signed assignments out, outcomes in
      └── routers: /healthz, /api/v1/{tokens,enrollment-tokens,enroll,devices,models,repository,ca,broker,rollouts,…}

Nothing here runs at import time: tests build as many apps as they like, each with its own settings.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

import controller
from controller.api import devices, enrollment, health, releases, repository, tokens
from controller.api.context import ControllerContext
from controller.api.errors import install_error_handlers
from controller.api.limits import BodySizeLimit
from controller.artifacts import ArtifactStore, UrlSigner, store_from_url
from controller.artifacts.http import artifact_router
from controller.artifacts.refresh import RepositoryRefresher
from controller.background import BackgroundStart, Periodic
from controller.build import BuildOptions, build_variants
from controller.dashboard import mount_dashboard
from controller.db import make_engine, make_session_factory
from controller.db import migrate as db_migrate
from controller.devices import DatabaseFleetSink, LivenessSweeper
from controller.enrollment.ca import FleetCA
from controller.enrollment.ratelimit import RateLimiter
from controller.enrollment.trust import TrustRoots
from controller.mqtt.bridge import BridgeConfig, MqttBridge
from controller.registry.repository import RepositoryPublisher, default_publisher, default_trust_roots
from controller.registry.service import BuildFn, ModelRegistry
from controller.rollouts import api as rollouts_api
from controller.rollouts.service import attach_to_app as attach_rollouts
from controller.samples import api as samples_api
from controller.security.audit import AuditMiddleware, install_audit_file
from controller.security.device_auth import device_router
from controller.security.redact import install_redaction
from controller.security.startup import run_startup_checks
from controller.settings import Settings
from controller.telemetry import api as telemetry_api
from controller.telemetry import prometheus as telemetry_metrics
from controller.telemetry.service import telemetry_service

PRESIGN_SECRET_FILE = "presign.key"
#: Presigned PUTs (captured samples) through the controller's own store.
ARTIFACT_UPLOAD_MAX_BYTES = 256 * 1024 * 1024
OPENAPI_TAGS = [
    {"name": "health", "description": "Liveness; no token needed."},
    {"name": "tokens", "description": "Operator API tokens (admin)."},
    {"name": "enrollment", "description": "Enrollment tokens, the public enroll call, CA material."},
    {"name": "devices", "description": "The device registry."},
    {"name": "models", "description": "Model releases, their variant builds and signed targets."},
    {"name": "repository", "description": "Offline release-key workflow for targets metadata."},
    {"name": "artifacts", "description": "Artifact downloads (signed repository; presigned URLs)."},
]


def _presign_secret(settings: Settings) -> bytes:
    """The HMAC key of presigned artifact URLs; every replica must read the same file."""
    path = settings.state_dir / PRESIGN_SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def create_app(
    settings: Settings,
    *,
    store: ArtifactStore | None = None,
    trust_roots: TrustRoots | None = None,
    build_fn: BuildFn | None = None,
    publisher: Any = None,
) -> FastAPI:
    """The application for `settings`; the keyword arguments replace built-in ports (tests, embedding)."""
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    signer = UrlSigner(
        secret=_presign_secret(settings), base_url=settings.public_url.rstrip("/") + "/artifacts"
    )
    if store is None:
        store = store_from_url(
            settings.resolved_artifact_url,
            signer=signer,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_access_key_id=settings.s3_access_key,
            s3_secret_access_key=settings.s3_secret_key,
            s3_region=settings.s3_region,
        )
    session_factory = make_session_factory(engine)
    registry = ModelRegistry(
        session_factory=session_factory,
        store=store,
        publisher=publisher if publisher is not None else default_publisher(settings, store),
        max_model_bytes=settings.max_model_bytes,
        max_golden_bytes=settings.max_golden_bytes,
        workers=settings.build_workers,
        build_options=BuildOptions(variants=settings.build_variants, latency_runs=settings.build_latency_runs),
        build_fn=build_fn or build_variants,
    )
    ctx = ControllerContext(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        ca=FleetCA.load_or_create(settings.resolved_ca_dir),
        enrollment_limiter=RateLimiter(
            rate_per_s=settings.enrollment_rate_per_minute / 60.0, burst=settings.enrollment_burst
        ),
        store=store,
        trust_roots=trust_roots if trust_roots is not None else default_trust_roots(settings, store),
        registry=registry,
    )
    # Refuse to run with readable key files, or with default secrets outside development mode.
    run_startup_checks(settings)

    background: list[Any] = [registry]
    if isinstance(registry.publisher, RepositoryPublisher):
        publisher_ = registry.publisher
        background.append(RepositoryRefresher(publisher_.repository, publisher_.lock))
    if settings.device_offline_after_s > 0:
        # Every replica sweeps (the UPDATE is idempotent); a replica that just started waits one full
        # threshold first, since it could not have heard from anyone while it was down.
        sweeper = LivenessSweeper(session_factory, offline_after_s=settings.device_offline_after_s)
        ctx.extras["liveness"] = sweeper
        background.append(Periodic(sweeper.sweep, every_s=sweeper.every_s, what="device liveness sweep",
                                   first_after_s=settings.device_offline_after_s))
    if settings.mqtt_bridge:
        bridge = MqttBridge(
            BridgeConfig(
                host=settings.mqtt_bridge_host or settings.mqtt_host,
                port=settings.mqtt_bridge_port or settings.mqtt_port,
                username=settings.mqtt_bridge_username,
                password=settings.mqtt_bridge_password,
            ),
            DatabaseFleetSink(session_factory),
        )
        ctx.extras["bridge"] = bridge
        background.append(BackgroundStart(bridge, what="MQTT bridge"))
        ctx.extras["telemetry"] = telemetry_service(settings, session_factory)
        background.append(BackgroundStart(ctx.extras["telemetry"], what="telemetry ingest"))
        rollout_runner = attach_rollouts(ctx, settings.resolved_keys_dir)
        if rollout_runner is not None:
            background.append(rollout_runner)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        install_redaction()  # here, after the server has set up its log handlers
        if settings.audit_log_file is not None:
            install_audit_file(settings.audit_log_file)
        if settings.migrate_on_start:
            db_migrate.upgrade(engine)
        for service in background:
            service.start()
        try:
            yield
        finally:
            for service in reversed(background):
                service.stop()
            engine.dispose()

    app = FastAPI(
        title="edgefleet controller",
        version=controller.__version__ if hasattr(controller, "__version__") else "0.1.0",
        description="Signed, compiled ML models for fleets of edge devices. "
        "Every route except `/healthz` and `POST /api/v1/enroll` needs an operator token "
        '(`Authorization: Bearer efo_…`); errors share one format: `{"error": {code, message, details}}`.',
        openapi_tags=OPENAPI_TAGS,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        default_max_bytes=1024 * 1024,
        # A model upload carries the model, the golden set and a little form overhead.
        large_routes={
            "/api/v1/models": settings.max_model_bytes + settings.max_golden_bytes + 1024 * 1024,
            "/artifacts": ARTIFACT_UPLOAD_MAX_BYTES,
            "/api/v1/repository/targets": repository.MAX_SIGNED_TARGETS_BYTES,
        },
    )
    app.add_middleware(AuditMiddleware)
    for router in (
        health.router,
        tokens.router,
        enrollment.router,
        devices.router,
        releases.router,
        repository.router,
    ):
        app.include_router(router)
    app.include_router(telemetry_api.router)
    app.include_router(telemetry_metrics.router)
    app.include_router(samples_api.router)
    app.include_router(rollouts_api.router)
    app.include_router(device_router(trust_proxy_certificate=settings.trust_proxy_client_certificate))
    app.include_router(
        artifact_router(store, signer=signer, max_upload_bytes=ARTIFACT_UPLOAD_MAX_BYTES), prefix="/artifacts"
    )
    mount_dashboard(app)
    return app
