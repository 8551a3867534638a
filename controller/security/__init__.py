"""Production security for the controller and its broker.

| module          | what                                                                          |
|-----------------|-------------------------------------------------------------------------------|
| broker_tls.py   | broker server / controller client certificates from the fleet CA; Mosquitto   |
|                 | mutual-TLS config (identity as username, CRL, packet size limit)               |
| crl.py          | check, install and reload the fleet CA's CRL on the broker host               |
| device_auth.py  | device credentials (token or proxied certificate) for `/api/v1/device/…` only  |
| redact.py       | logging filter: tokens, Authorization values, presigned URL signatures, keys   |
| files.py        | private writes; key-file mode/owner checks                                     |
| startup.py      | start-up checks: key files, default secrets outside development mode          |
| __main__.py     | `python -m controller.security …`: the commands the playbooks run              |

Errors: `controller.security.errors` (SecurityError → SecurityConfigError, InsecureKeyFile,
DefaultSecretRefused); none is retryable.
"""

from __future__ import annotations

from controller.security.errors import (
    DefaultSecretRefused,
    InsecureKeyFile,
    SecurityConfigError,
    SecurityError,
)
from controller.security.redact import RedactingFilter, install_redaction, redact

__all__ = [
    "DefaultSecretRefused",
    "InsecureKeyFile",
    "RedactingFilter",
    "SecurityConfigError",
    "SecurityError",
    "install_redaction",
    "redact",
]
