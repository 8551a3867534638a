"""sd_notify over a real Unix datagram socket, including the abstract namespace and the watchdog rules."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from agent.daemon.notify import SystemdNotifier


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_ready_watchdog_stopping_reach_the_socket(tmp_path: Path) -> None:
    with receiver(str(tmp_path / "notify")) as sock:
        n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "3000000"})
        assert n.enabled and n.watchdog_interval_s == 1.5
        assert n.ready("serving digits 1") and n.watchdog() and n.stopping()
        assert [sock.recv(1024) for _ in range(3)] == [b"READY=1\nSTATUS=serving digits 1", b"WATCHDOG=1",
                                                        b"STOPPING=1"]


def test_abstract_socket_address(tmp_path: Path) -> None:
    name = f"edgefleet-test-{os.getpid()}"
    with receiver("\0" + name) as sock:
        assert SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(1024) == b"READY=1"


def test_without_systemd_everything_is_a_quiet_no_op(tmp_path: Path) -> None:
    n = SystemdNotifier({})
    assert not n.enabled and n.watchdog_interval_s is None and not n.ready()
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled and not gone.watchdog()  # a vanished service manager never raises


def test_watchdog_for_another_pid_is_not_ours() -> None:
    n = SystemdNotifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_interval_s is None
    assert SystemdNotifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 0.5
