"""Tables of the controller platform: operator tokens, enrollment, devices, model releases and variants.

Tags live in their own table rather than a JSON column so "devices with tag X" is the same indexed
query on SQLite and PostgreSQL. Secrets (operator tokens, enrollment tokens, MQTT passwords) are stored
only as hashes. Column names are persisted values: rename through a migration, never in place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.db.base import Base, UtcDateTime, utcnow


class ApiToken(Base):
    """An operator's bearer token: only its SHA-256 is kept; `prefix` lets people tell tokens apart."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class EnrollmentToken(Base):
    """A one-time token a new device presents; it may pin the device's hardware class and tags."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(String(256), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    hardware_class: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    used_by_device: Mapped[str | None] = mapped_column(String(64), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Device(Base):
    """One enrolled device: identity, credentials (hashed), hardware, and what it last reported."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)  # active | revoked
    hardware_class: Mapped[str] = mapped_column(String(64), index=True)
    hardware_profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enrolled_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    cert_serial: Mapped[str] = mapped_column(String(64), unique=True)
    cert_not_after: Mapped[datetime] = mapped_column(UtcDateTime())
    public_key_sha256: Mapped[str] = mapped_column(String(64), index=True)
    mqtt_username: Mapped[str] = mapped_column(String(64), unique=True)
    mqtt_password_hash: Mapped[str] = mapped_column(String(256))
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    current_model: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    current_version: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    current_variant: Mapped[str | None] = mapped_column(String(128), nullable=True)
    update_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    tags: Mapped[list[DeviceTag]] = relationship(
        back_populates="device", cascade="all, delete-orphan", lazy="selectin", order_by="DeviceTag.tag"
    )

    @property
    def tag_names(self) -> list[str]:
        return [t.tag for t in self.tags]


class DeviceTag(Base):
    __tablename__ = "device_tags"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)

    device: Mapped[Device] = relationship(back_populates="tags")


class DeviceCertificate(Base):
    """Every certificate the fleet CA issued to a device: enrollment and each renewal.

    Kept forever so a key once retired (superseded by a renewal) or belonging to a revoked device can
    never be enrolled or renewed again, and so the CRL can list every unexpired serial that is barred.
    """

    __tablename__ = "device_certificates"

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    public_key_sha256: Mapped[str] = mapped_column(String(64), index=True)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime())
    superseded_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class DeviceEvent(Base):
    """The device's history: enrollment, revocation, status changes, update events."""

    __tablename__ = "device_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelRelease(Base):
    """One uploaded model version: queued → building → published | awaiting_signature | failed."""

    __tablename__ = "model_releases"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_releases_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(64), default="classification")
    preprocessing: Mapped[str] = mapped_column(Text, default="")
    release_counter: Mapped[int] = mapped_column(Integer, default=0)
    min_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    # queued | building | awaiting_signature | published | failed
    status: Mapped[str] = mapped_column(String(24), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str] = mapped_column(String(256), default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # model facts, baseline figures
    model_key: Mapped[str] = mapped_column(String(512))
    golden_key: Mapped[str] = mapped_column(String(512))
    model_sha256: Mapped[str] = mapped_column(String(64))
    model_bytes: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)

    variants: Mapped[list[Variant]] = relationship(
        back_populates="release", cascade="all, delete-orphan", lazy="selectin", order_by="Variant.variant_id"
    )


class Variant(Base):
    """One compiled variant of a release and its build-time figures on the golden set."""

    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("release_id", "variant_id", name="uq_variants_release_variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("model_releases.id", ondelete="CASCADE"), index=True)
    variant_id: Mapped[str] = mapped_column(String(128))
    runtime: Mapped[str] = mapped_column(String(32))
    precision: Mapped[str] = mapped_column(String(16))
    target_path: Mapped[str] = mapped_column(String(512))
    artifact_key: Mapped[str | None] = mapped_column(String(512), nullable=True)  # None: build failed
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    agreement: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="ready")  # ready|rejected|unverified|failed
    offered: Mapped[bool] = mapped_column(Boolean, default=True)
    note: Mapped[str] = mapped_column(Text, default="")
    figures: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the full build-time evaluation
    custom: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    release: Mapped[ModelRelease] = relationship(back_populates="variants")
