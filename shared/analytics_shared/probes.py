"""`check-config --probe` for both services: one line per dependency.

Each check returns where it reached (no secret) or raises; the line is
`<name>: ok: <where>` or `<name>: FAILED: <Type>: <reason> (check <settings>)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from analytics_shared.cli_edge import EXIT_FAILURE, one_line
from analytics_shared.manifest import MANIFEST_KEY
from analytics_shared.object_store import ObjectNotFound, ObjectStore

__all__ = ["Probe", "probe_store", "run_probes"]

# (dependency, the settings that name it, the check)
Probe = tuple[str, str, Callable[[], str]]


def probe_store(store: ObjectStore) -> str:
    """Read the current manifest: the store answers, with or without a version."""
    try:
        store.get_bytes(MANIFEST_KEY)
        return f"{store.url} (a version is published)"
    except ObjectNotFound:
        return f"{store.url} (nothing published yet)"


def run_probes(probes: Sequence[Probe]) -> int:
    """Print one line per dependency; 0 when all are reached, else EXIT_FAILURE."""
    failed = 0
    for name, settings, check in probes:
        try:
            print(f"{name}: ok: {check()}", flush=True)
        except Exception as exc:  # each dependency's reason, on its own line
            failed += 1
            reason = next(iter(str(getattr(exc, "orig", None) or exc).strip().splitlines()), "")
            print(
                one_line(f"{name}: FAILED: {type(exc).__name__}: {reason} (check {settings})"),
                flush=True,
            )
    return EXIT_FAILURE if failed else 0
