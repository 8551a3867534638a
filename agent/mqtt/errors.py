"""Errors of the agent's MQTT session.

::

    MqttError                     base of this package
    ├── ConfigError               invalid session settings (device id, limits); fix the config, no retry
    ├── OutboxError               the on-disk outbox cannot be read or written; retry after freeing disk
    └── PayloadRejected           an incoming payload was dropped (oversized, wrong topic, failed
                                  verification); `reason` is a short code counted by the session;
                                  the same bytes will always be rejected

Transport failures (broker down, refused credentials) are not raised: the session reconnects with
backoff by itself and reports them through `SessionStats`.
"""

from __future__ import annotations


class MqttError(Exception):
    """Base of the agent MQTT errors."""


class ConfigError(MqttError):
    pass


class OutboxError(MqttError):
    pass


class PayloadRejected(MqttError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
