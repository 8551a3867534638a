"""The `samples` table: metadata of inference samples devices captured for retraining.

A row is created when a device asks for an upload URL (`pending`) and becomes `uploaded` once the
controller has checked the stored object's size and SHA-256 against what the device declared. The
bytes live in the artifact store under `samples/<model>/<version>/<device>/<sample_id>.npz`; export
reads only `uploaded` rows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from controller.db.base import Base, UtcDateTime, utcnow


class SampleRow(Base):
    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("device_id", "sample_id", name="uq_samples_device_sample"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    sample_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(128))
    variant: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    captured_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    uploaded_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
