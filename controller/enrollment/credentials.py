"""Per-device MQTT credentials and the broker password file made from them.

Each device gets username = its device id and a random 256-bit password, shown once in the enrollment
answer. The controller keeps only Mosquitto's own `$7$` PBKDF2-SHA512 form (`controller.mqtt.
mosquitto_auth.hash_password`, what `mosquitto_passwd` writes), so the broker's password file is a dump
of the active devices' stored hashes and a revoked device simply disappears from it. The plaintext is
never kept, which is why this module writes the file from hashes rather than from passwords.
"""

from __future__ import annotations

import secrets

from controller.mqtt.mosquitto_auth import hash_password, verify_password

__all__ = ["generate_password", "hash_password", "password_file_text", "verify_password"]


def generate_password() -> str:
    return secrets.token_urlsafe(32)


def password_file_text(entries: list[tuple[str, str]]) -> str:
    """Mosquitto `password_file` content for `(username, $7$ hash)` pairs."""
    lines = []
    for username, encoded in sorted(entries):
        if not username or any(c in username for c in ":\n\r") or any(c in encoded for c in "\n\r"):
            raise ValueError(f"refusing to write broker credential for username {username!r}")
        lines.append(f"{username}:{encoded}\n")
    return "".join(lines)
