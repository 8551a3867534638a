"""The device daemon: `edgefleet-agent run` ties the agent's parts into one long-running process.

```
 MQTT (AgentSession) ──assignment bytes──▶ AssignmentInbox (latest only)
                                              │ worker thread
                                              ▼
   TrustClient.check ─▶ pending plan (disk) ─▶ commit ─▶ UpdateEngine.apply ─▶ LazyServing
                  │ refused                                    │ UpdateEvent        (Activator +
                  ▼                                            ▼                     Probation ports,
      event `assignment_rejected`                 MqttReporter ─▶ Outbox ─▶ status / events
                                                                            inference server)
```

Start-up order: refuse to run if the device's secrets are readable by others, serve the committed
model, then connect, then finish whatever a crash interrupted (the engine's journal), then take
assignments. The inference server, numpy and the runtimes are imported only once there is a model
to serve; python-tuf only once an assignment arrives.

Sample capture (`capture.py`): the assignment's `CapturePolicy` picks inference rows (and, during
probation, rows where the previous version answers differently); an upload thread sends them to the
controller with the device's credentials, backing off while that fails.

Errors (one tree)::

    DaemonError            the daemon cannot run as configured (retry: no, fix the cause)
    └── ConfigError        the config file or environment is invalid; the message names the key
"""

from __future__ import annotations

from agent.daemon.errors import ConfigError, DaemonError

__all__ = ["ConfigError", "DaemonError"]
