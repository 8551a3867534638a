"""The daemon's error tree (drawn in `agent.daemon`)."""

from __future__ import annotations


class DaemonError(Exception):
    """The daemon cannot run as configured; restarting it unchanged will not help."""


class ConfigError(DaemonError):
    """The config file or an environment variable is invalid; the message names the key."""
