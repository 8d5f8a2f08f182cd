"""A loopback TCP proxy whose connections a test can cut (testsupport/tcp_forwarder.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["TcpProxy"]


class TcpProxy:
    """A TCP forwarder process (tcp_forwarder.py) whose connections can be cut."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        script = Path(__file__).with_name("tcp_forwarder.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), target_host, str(target_port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def drop(self) -> None:
        """Cut every open connection and refuse new ones."""
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.2)  # let the signal land before the caller goes on

    def restore(self) -> None:
        self.proc.send_signal(signal.SIGUSR2)
        time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
