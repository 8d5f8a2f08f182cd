"""How much memory this process tree may use: the container's limit, found once.

A service sizes its work from this (DuckDB's memory_limit, caches, buffers),
so it must be the limit the kernel will enforce, not the machine's RAM:

1. `MEMORY_LIMIT` when set (e.g. `512MB`, `1GiB`, `536870912`);
2. the process's own cgroup: v2 `memory.max`, v1 `memory.limit_in_bytes`
   (hierarchical: the smallest limit on the way up to the root wins);
3. the machine's memory (`MemTotal`) when no limit is set.

Sizes are written 1000- or 1024-based as their unit says (`MB`, `MiB`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from analytics_shared.errors import ConfigurationError

__all__ = [
    "MemoryLimit",
    "detect_memory_limit",
    "explicit_settings",
    "format_size",
    "headroom",
    "parse_size",
]

Source = Literal["MEMORY_LIMIT", "cgroup v2", "cgroup v1", "machine", "all-in-one share"]

# Larger than any real machine: the kernel's way of saying "no limit" in v1.
_UNLIMITED = 1 << 60
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, setting: str = "size") -> int:
    """Bytes in `512MB`, `1.5GiB`, `536870912`; a clear error names `setting`."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ConfigurationError(
            f"{setting}: {text!r} is not a size (write e.g. 512MB, 1GiB or a number of bytes)"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(size: int) -> str:
    """A size DuckDB and people read the same way (MiB, whole numbers)."""
    return f"{max(1, size // 2**20)}MiB"


# What a container keeps free of its services' budgets: the kernel's page cache
# for the files they read, allocator slack, measurement error.
HEADROOM_FRACTION = 0.10
MIN_HEADROOM = 32 * 2**20


def headroom(limit_bytes: int) -> int:
    """The part of a memory limit no budget hands out."""
    return max(MIN_HEADROOM, int(limit_bytes * HEADROOM_FRACTION))


def explicit_settings(**values: object) -> tuple[str, ...]:
    """The names of the sizing settings the operator set (not None), for the log."""
    return tuple(name for name, value in values.items() if value is not None)


@dataclass(frozen=True)
class MemoryLimit:
    bytes: int
    source: Source

    def describe(self) -> str:
        return f"{self.bytes / 2**20:.0f} MiB ({self.source})"


def detect_memory_limit(setting: str | None = None, *, root: Path = Path("/")) -> MemoryLimit:
    """The limit that applies to this process (see the module docstring).

    `root` lets tests point at a fake /proc and /sys tree.
    """
    if setting and setting.strip():
        return MemoryLimit(parse_size(setting, "MEMORY_LIMIT"), "MEMORY_LIMIT")
    machine = _machine_memory(root)
    for source, limit in _cgroup_limits(root):
        if limit < min(machine, _UNLIMITED):
            return MemoryLimit(limit, source)
    return MemoryLimit(machine, "machine")


def _machine_memory(root: Path) -> int:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _UNLIMITED


def _cgroup_limits(root: Path) -> list[tuple[Source, int]]:
    """The tightest limit of each cgroup hierarchy this process belongs to."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found: list[tuple[Source, int]] = []
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":  # v2: "0::/path"
            for mount in ("sys/fs/cgroup", "sys/fs/cgroup/unified"):
                limit = _tightest(root / mount, path, "memory.max")
                if limit is not None:
                    found.append(("cgroup v2", limit))
                    break
        elif "memory" in controllers.split(","):
            limit = _tightest(root / "sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
            if limit is not None:
                found.append(("cgroup v1", limit))
    return found


def _tightest(mount: Path, path: str, name: str) -> int | None:
    """The smallest `name` from the process's cgroup up to the mount's root."""
    if not (mount / name).exists() and not (mount / path.lstrip("/") / name).exists():
        return None
    best: int | None = None
    here = mount / path.lstrip("/")
    while True:
        try:
            raw = (here / name).read_text().strip()
        except OSError:
            raw = ""
        if raw and raw != "max":
            value = int(raw)
            best = value if best is None else min(best, value)
        if here == mount or mount not in here.parents:
            break
        here = here.parent
    return best if best is not None else _UNLIMITED
