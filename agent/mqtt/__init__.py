"""The agent's MQTT control-plane session and its persisted outbox.

```
 controller ──(retained, signed) edgefleet/v1/<dev>/assignment──▶ AgentSession ──▶ AssignmentPort
                                                                     │ (verifies, queues for the engine)
 controller ◀── status (retained) / events ── broker ◀── QoS 1 ── Outbox (disk, seq-numbered)
 controller ◀── online (retained; last will "offline") ──────────────┘
```

Errors: see `agent.mqtt.errors`.
"""

from __future__ import annotations

from agent.mqtt.errors import ConfigError, MqttError, OutboxError, PayloadRejected
from agent.mqtt.outbox import Outbox, OutboxEntry, OutboxLimits
from agent.mqtt.session import AgentSession, AssignmentPort, SessionConfig

__all__ = [
    "AgentSession",
    "AssignmentPort",
    "ConfigError",
    "MqttError",
    "Outbox",
    "OutboxEntry",
    "OutboxError",
    "OutboxLimits",
    "PayloadRejected",
    "SessionConfig",
]
