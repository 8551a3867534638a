"""Errors of the agent's telemetry package.

    TelemetryError(Exception)            root; nothing here stops the device from serving
    ├── SpoolError                       the on-disk spool cannot be read or written (retry: maybe,
    │                                    once the disk has room again)
    └── TelemetryWireError(WireError)    defined in `agent.telemetry.wire`: an invalid payload
                                         (retry: no; the same bytes always fail)
"""

from __future__ import annotations


class TelemetryError(Exception):
    """Root of the telemetry errors."""


class SpoolError(TelemetryError):
    """The telemetry spool on disk cannot be read or written; a later attempt may succeed."""
