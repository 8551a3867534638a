"""systemd's notify protocol (`Type=notify`, `WatchdogSec=`): a few datagrams on a Unix socket.

Why not a library: the protocol is one `sendto` of `KEY=VALUE` lines to the socket named in
`NOTIFY_SOCKET` (a leading `@` means the abstract namespace), and device images should not need
another package for it. Without `NOTIFY_SOCKET` (run by hand, in a container) every call is a no-op.

The watchdog interval is half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) recommends; when
`WATCHDOG_PID` names another process the watchdog is not ours and is left alone.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one state message; False (logged once per failure) when it could not be delivered."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), self.address)
        except OSError as e:  # the service manager going away must never stop the agent
            log.warning("sd_notify %r failed: %s", message.split("\n", 1)[0], e)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
