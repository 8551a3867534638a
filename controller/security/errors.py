"""Errors of the controller's security checks.

::

    SecurityError                 base; none of these is cured by retrying
    ├── SecurityConfigError       unusable security material (CA files, broker TLS inputs)
    ├── InsecureKeyFile           a private key or secret file is readable by others or owned by
    │                             someone else: fix its mode/owner (the message names both)
    └── DefaultSecretRefused      a well-known default credential is configured outside development
                                  mode: set a real secret or start in development mode
"""

from __future__ import annotations


class SecurityError(Exception):
    """Base of the security errors."""


class SecurityConfigError(SecurityError):
    pass


class InsecureKeyFile(SecurityError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class DefaultSecretRefused(SecurityError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
