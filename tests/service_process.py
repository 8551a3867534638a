"""The life cycle shared by every test service: one child process, its ports, its log, its probe.

A subclass names its ports, writes its config in `_prepare()`, gives its command line and says
whether it `_answers()` yet. The base class does the rest:

    start()   -> allocate free loopback ports (first start only) -> _prepare() -> spawn -> poll _answers()
    stop()    -> stop_signal to the process group, wait; SIGKILL if it does not exit in time
    kill()    -> SIGKILL to the process group at once (a crash: no clean shutdown, no flush)
    restart() -> stop() if running, then start() on the same ports and data

Ports picked by binding port 0 can be taken by someone else before the service binds them (the
machine is shared); a first start that dies before answering is retried on fresh ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
_LOG_TAIL_LINES = 60


class ServiceError(RuntimeError):
    """A test service could not be started or did not answer in time (its log tail is in the message)."""


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def mqtt_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when an MQTT 3.1.1 CONNECT gets a CONNACK (any return code: refusing also answers)."""
    client_id = b"edgefleet-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    packet = b"\x10" + bytes([len(variable)]) + variable
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(packet)
            reply = sock.recv(4)
            if len(reply) == 4 and reply[0] == 0x20:
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
                return True
            return False
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test process dies, so no server outlives a crashed run.

    Services run in their own session (so `kill()` can signal the whole group), which also shields them
    from the terminal's hangup; this puts the link back. Linux only; elsewhere a no-op.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Service:
    """Base class of the test services; see the module docstring for the life cycle."""

    name = "service"
    host = HOST
    stop_signal: signal.Signals = signal.SIGTERM
    start_timeout_s = 30.0
    stop_timeout_s = 15.0
    _start_attempts = 3

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # --- to be provided by subclasses -----------------------------------------------------------

    def _port_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files for the current ports; runs before every start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _spawn_user(self) -> str | None:
        """Unix user to run the process as (None: the current one)."""
        return None

    def _on_ready(self) -> None:
        """Runs after the first successful probe of each start (e.g. wait for a bucket)."""

    # --- life cycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.process.pid})")  # type: ignore[union-attr]
        fresh = not self.ports
        attempts = self._start_attempts if fresh else 1
        for attempt in range(1, attempts + 1):
            if fresh:
                self.ports = {name: free_port() for name in self._port_names()}
            try:
                self._start_once()
                return
            except ServiceError:
                self._reap()
                if attempt == attempts:
                    raise

    def _start_once(self) -> None:
        self._prepare()
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"==== start {self.starts}: ports {self.ports} ====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True, user=self._spawn_user(),
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not self._answers():
            if self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.process.returncode} before answering; "
                                   f"log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} did not answer within {self.start_timeout_s} s; "
                                   f"log:\n{self.log_tail()}")
            time.sleep(0.05)
        self._on_ready()

    def stop(self) -> None:
        """Ask the service to shut down cleanly; kill it if it takes longer than `stop_timeout_s`."""
        if not self.running:
            self._reap()
            return
        assert self.process is not None
        self._signal_group(self.stop_signal)
        try:
            self.process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the whole process group: the service gets no chance to flush or say goodbye."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop for good (fixture teardown)."""
        self.stop()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def _reap(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=self.stop_timeout_s)
        # children left in the group (e.g. backends after a postmaster SIGKILL) go with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ports={self.ports} running={self.running}>"
