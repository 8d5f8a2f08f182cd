"""Finding the container's memory limit: MEMORY_LIMIT, cgroup v2, cgroup v1, the machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from analytics_shared.errors import ConfigurationError
from analytics_shared.memory_limit import (
    MemoryLimit,
    detect_memory_limit,
    format_size,
    parse_size,
)

MIB = 2**20


def _tree(tmp_path: Path, cgroup: str, files: dict[str, str], mem_kib: int = 8 * 2**20) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text(f"MemTotal:       {mem_kib} kB\nMemFree: 1 kB\n")
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "parent, own, expected",
    [("max", str(512 * MIB), 512 * MIB), (str(256 * MIB), "max", 256 * MIB)],
    ids=["own-group", "parent-tighter"],
)
def test_cgroup_v2_the_tightest_limit_up_the_hierarchy(tmp_path, parent, own, expected):
    root = _tree(
        tmp_path,
        "0::/app/api\n",
        {
            "sys/fs/cgroup/memory.max": "max\n",
            "sys/fs/cgroup/app/memory.max": f"{parent}\n",
            "sys/fs/cgroup/app/api/memory.max": f"{own}\n",
        },
    )
    assert detect_memory_limit(root=root) == MemoryLimit(expected, "cgroup v2")


def test_cgroup_v1_limit(tmp_path):
    root = _tree(
        tmp_path,
        "4:memory:/docker/abc\n3:cpu:/\n0::/\n",
        {
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{1024 * MIB}\n",
        },
    )
    assert detect_memory_limit(root=root) == MemoryLimit(1024 * MIB, "cgroup v1")


def test_no_limit_means_the_machine_memory(tmp_path):
    root = _tree(
        tmp_path,
        "4:memory:/\n0::/\n",
        {"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"},
        mem_kib=4 * 2**20,
    )
    assert detect_memory_limit(root=root) == MemoryLimit(4 * 2**30, "machine")


def test_a_limit_above_the_machine_memory_is_the_machine(tmp_path):
    root = _tree(
        tmp_path,
        "0::/x\n",
        {"sys/fs/cgroup/memory.max": "max\n", "sys/fs/cgroup/x/memory.max": f"{64 * 2**30}\n"},
        mem_kib=2 * 2**20,
    )
    assert detect_memory_limit(root=root).source == "machine"


def test_memory_limit_setting_wins(tmp_path):
    root = _tree(tmp_path, "0::/x\n", {"sys/fs/cgroup/x/memory.max": f"{512 * MIB}\n"})
    assert detect_memory_limit("1GiB", root=root) == MemoryLimit(2**30, "MEMORY_LIMIT")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("512MB", 512_000_000),
        ("512MiB", 512 * MIB),
        ("1.5GiB", 3 * 2**29),
        ("1024", 1024),
        ("2g", 2 * 10**9),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "12 parsecs", "-5MB", ""])
def test_parse_size_refuses_nonsense_naming_the_setting(text):
    with pytest.raises(ConfigurationError, match=r"MEMORY_LIMIT: .* is not a size"):
        parse_size(text, "MEMORY_LIMIT")


def test_format_size_is_whole_mebibytes():
    assert format_size(300 * MIB + 5) == "300MiB"
    assert parse_size(format_size(300 * MIB)) == 300 * MIB


def test_this_machine_reports_some_limit():
    limit = detect_memory_limit()
    assert limit.bytes > 64 * MIB
