"""Running a command inside a fresh memory cgroup, as a 512 MB container would.

`MemoryCgroup` creates a child cgroup with a hard memory limit (cgroup v2
`memory.max`, or v1 `memory.limit_in_bytes` with swap capped too), starts
processes in it (their children inherit it), and reads back what a test needs
to judge the run: the peak usage, how often the limit was hit, and how many
processes the kernel's OOM killer took. Leaving the context kills whatever is
still inside and removes the cgroup.

`memory_cgroup_unavailable()` says why no cgroup can be made here (not root,
no writable memory controller), so tests can skip with that reason.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CgroupUsage", "MemoryCgroup", "memory_cgroup_unavailable"]

_V1_ROOT = Path("/sys/fs/cgroup/memory")
_V2_CANDIDATES = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def _v2_root() -> Path | None:
    for root in _V2_CANDIDATES:
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            return root
    return None


def memory_cgroup_unavailable() -> str | None:
    """None when a memory cgroup can be created here, else the reason."""
    if os.geteuid() != 0:
        return "creating a memory cgroup needs root"
    root = _v2_root() or (_V1_ROOT if (_V1_ROOT / "memory.limit_in_bytes").exists() else None)
    if root is None:
        return "no memory cgroup controller is mounted"
    probe = root / f"probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot create a cgroup under {root}: {exc}"
    return None


@dataclass(frozen=True)
class CgroupUsage:
    limit_bytes: int
    peak_bytes: int
    limit_hits: int  # times an allocation met the limit (v1 failcnt, v2 events "max")
    oom_kills: int

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


class MemoryCgroup:
    """A child memory cgroup with a hard limit; use as a context manager."""

    def __init__(self, limit_bytes: int, name: str | None = None) -> None:
        self.limit_bytes = limit_bytes
        self._v2 = _v2_root()
        root = self._v2 or _V1_ROOT
        self.path = root / (name or f"analytics-test-{uuid.uuid4().hex[:10]}")
        self.procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> MemoryCgroup:
        self.path.mkdir()
        if self._v2:
            (self.path / "memory.max").write_text(str(self.limit_bytes))
            with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit_bytes))
            if _swap_enabled():  # (capping memsw without swap stops failcnt counting)
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(self.limit_bytes))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `args` inside the cgroup (it joins before it execs)."""
        procs_file = str(self.path / "cgroup.procs")

        def join() -> None:
            with open(procs_file, "w") as fh:
                fh.write(str(os.getpid()))

        proc = subprocess.Popen(args, preexec_fn=join, **kwargs)
        self.procs.append(proc)
        return proc

    def run(
        self, args: list[str], timeout: float, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        proc = self.popen(args, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        return subprocess.CompletedProcess(args, proc.returncode, out, err)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def usage(self) -> CgroupUsage:
        if self._v2:
            events = _keyed(self.path / "memory.events")
            peak_file = self.path / "memory.peak"
            peak = int(peak_file.read_text()) if peak_file.exists() else -1
            return CgroupUsage(
                self.limit_bytes, peak, events.get("max", 0), events.get("oom_kill", 0)
            )
        oom = _keyed(self.path / "memory.oom_control")
        # With swap capped too, the memory+swap counter may be the one that trips.
        hits = max(_int(self.path / "memory.failcnt"), _int(self.path / "memory.memsw.failcnt"))
        peak = _int(self.path / "memory.max_usage_in_bytes")
        return CgroupUsage(self.limit_bytes, peak, hits, oom.get("oom_kill", 0))

    def close(self) -> None:
        """Kill whatever is still inside, then remove the cgroup."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        deadline = time.monotonic() + 10
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        while self.path.exists() and time.monotonic() < deadline + 5:
            try:
                self.path.rmdir()
            except OSError:
                time.sleep(0.1)  # the kernel frees the last pages a moment later


def _swap_enabled() -> bool:
    try:
        return len(Path("/proc/swaps").read_text().splitlines()) > 1
    except OSError:
        return False


def _int(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def _keyed(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values
