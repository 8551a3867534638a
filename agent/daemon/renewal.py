"""Keep the device certificate fresh while the daemon runs.

A check shortly after start-up, then one every `cert_renewal_check_every_s` (with ±10 % jitter so a
fleet powered on together does not renew together). `edgefleet-agent renew --if-due`, run as a child
process (`renew_in_child`), decides and does the work; this loop only schedules it, retries sooner when the controller could not be reached, and tells
the MQTT session to use the new pair on its next connection. The old certificate stays valid until it
expires or the controller sees the new one in use, so there is no hurry to reconnect.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime

from agent.daemon.config import DaemonConfig
from agent.enroll import EnrollError, Identity
from agent.renewal import Renewed

log = logging.getLogger("agent.daemon.renewal")

RenewFn = Callable[[Identity, str | None], "Renewed | None"]

# Exit code `edgefleet-agent renew` uses for "try again later" (EX_TEMPFAIL).
_RETRY_LATER = 75


class RenewalFailed(EnrollError):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def renew_in_child(identity: Identity, controller_url: str | None, timeout_s: float = 120.0) -> Renewed | None:
    """`edgefleet-agent renew --if-due` in a short-lived child process.

    The check parses X.509 with `cryptography`, which would otherwise stay loaded in the daemon for
    good (~9 MB of a ~30 MB idle agent) for a once-a-day look at one date; the child also keeps a
    crash in the TLS stack away from the serving process.
    """
    command = [sys.executable, "-m", "agent.cli", "renew", "--state-dir", str(identity.state_dir), "--if-due"]
    if controller_url:
        command += ["--controller", controller_url]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RenewalFailed(f"renewal check did not finish: {e}", retryable=True) from e
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RenewalFailed(message, retryable=done.returncode == _RETRY_LATER)
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        if not answer.get("renewed"):
            return None
        return Renewed(device_id=str(answer["device_id"]), serial=str(answer["serial"]),
                       not_after=datetime.fromisoformat(str(answer["not_after"])),
                       previous_serial=str(answer["previous_serial"]))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise RenewalFailed(f"renewal check printed no valid answer: {done.stdout[-200:]!r}", retryable=True) from e


class RenewalLoop:
    """Runs on its own thread until `stop` is set; `on_renewed` runs after each successful renewal."""

    def __init__(self, identity: Identity, controller_url: str | None, check_every_s: float,
                 stop: threading.Event, on_renewed: Callable[[Renewed], None], renew: RenewFn = renew_in_child,
                 first_check_s: float = 30.0, retry_s: float = 3600.0) -> None:
        self.identity = identity
        self.controller_url = controller_url
        self.check_every_s = check_every_s
        self.stop = stop
        self.on_renewed = on_renewed
        self.renew = renew
        self.first_check_s = first_check_s
        self.retry_s = retry_s
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_daemon(cls, config: DaemonConfig, stop: threading.Event,
                   on_renewed: Callable[[Renewed], None]) -> RenewalLoop:
        return cls(Identity(config.state_dir), config.controller_url, config.cert_renewal_check_every_s, stop,
                   on_renewed)

    @property
    def enabled(self) -> bool:
        """Only devices enrolled with the fleet CA hold a certificate to renew."""
        return self.check_every_s > 0 and self.identity.enrolled() is not None

    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self.run, name="cert-renewal", daemon=True)
        self._thread.start()

    def run(self) -> None:
        delay = self.first_check_s * random.uniform(0.5, 1.5)
        while not self.stop.wait(delay):
            delay = self.check_once()

    def check_once(self) -> float:
        """One check; returns the seconds until the next one."""
        every = self.check_every_s * random.uniform(0.9, 1.1)
        try:
            renewed = self.renew(self.identity, self.controller_url)
        except EnrollError as e:
            self.last_error = str(e)
            log.warning("certificate renewal failed (%s): %s", "will retry" if e.retryable else "giving up until "
                        "the next check", e)
            return min(self.retry_s, every) if e.retryable else every
        except (OSError, ValueError) as e:  # an unreadable pair: the next check may find it repaired
            self.last_error = str(e)
            log.error("certificate renewal check failed: %s", e)
            return every
        self.last_error = None
        if renewed is not None:
            log.info("device certificate renewed: serial %s (was %s), valid until %s", renewed.serial,
                     renewed.previous_serial, renewed.not_after.isoformat())
            self.on_renewed(renewed)
        return every
