"""The controller side of the MQTT control plane.

```
 rollout engine ── signed bytes ──▶ MqttBridge.publish_assignment ──▶ edgefleet/v1/<dev>/assignment (retained)
 FleetSink ◀── dedupe (device, stream, seq) ◀── decode (agent.wire) ◀── $share/controllers/edgefleet/v1/+/{status,events,online}
 mosquitto_auth: passwd ($7$ PBKDF2) + acl (pattern … %u) for the broker
```

Errors: see `controller.mqtt.errors`.
"""

from __future__ import annotations

from controller.mqtt.bridge import BridgeConfig, FleetSink, MqttBridge
from controller.mqtt.dedupe import SequenceDeduper
from controller.mqtt.errors import AuthFileError, BridgeError, BrokerUnavailable, MqttBridgeError

__all__ = [
    "AuthFileError",
    "BridgeConfig",
    "BridgeError",
    "BrokerUnavailable",
    "FleetSink",
    "MqttBridge",
    "MqttBridgeError",
    "SequenceDeduper",
]
