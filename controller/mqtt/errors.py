"""Errors of the controller's MQTT bridge and broker-auth generator.

::

    MqttBridgeError                 base of this package
    ├── BridgeError                 misuse or refusal (bad credentials, not started, empty payload);
    │                               retrying the same call cannot help
    ├── BrokerUnavailable           the broker did not answer or acknowledge in time; retry later
    └── AuthFileError               a username or file for the broker's password/ACL files is invalid
"""

from __future__ import annotations


class MqttBridgeError(Exception):
    """Base of controller.mqtt errors."""


class BridgeError(MqttBridgeError):
    retryable = False


class BrokerUnavailable(MqttBridgeError):
    retryable = True


class AuthFileError(MqttBridgeError):
    retryable = False
