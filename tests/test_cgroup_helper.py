"""The memory-cgroup runner the 512 MB tests rely on reports what the kernel did."""

from __future__ import annotations

import sys

import pytest

from testsupport.cgroup import MemoryCgroup, memory_cgroup_unavailable

pytestmark = pytest.mark.skipif(
    memory_cgroup_unavailable() is not None, reason=str(memory_cgroup_unavailable())
)

ALLOCATE = "import sys; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096])"


def test_a_process_within_its_limit_runs_and_its_peak_is_measured():
    with MemoryCgroup(128 * 2**20) as cg:
        done = cg.run([sys.executable, "-c", ALLOCATE, "40"], timeout=60)
        usage = cg.usage()
    assert done.returncode == 0
    assert 40 <= usage.peak_mb <= 128
    assert usage.oom_kills == 0


def test_a_process_over_its_limit_is_oom_killed_and_counted():
    with MemoryCgroup(64 * 2**20) as cg:
        done = cg.run([sys.executable, "-c", ALLOCATE, "200"], timeout=60)
        usage = cg.usage()
        path = cg.path
    assert done.returncode == -9
    assert usage.oom_kills >= 1 and usage.limit_hits >= 1
    assert not path.exists()  # removed on exit
