"""Published versions: listing them, and rolling back to an older one."""

from __future__ import annotations

import argparse

from etl_service.publisher import HISTORY_PREFIX, Publisher
from etl_service.settings import EtlSettings

__all__ = ["cmd_rollback", "cmd_versions"]


def cmd_versions(settings: EtlSettings, _args: argparse.Namespace) -> int:
    publisher = Publisher(settings.open_store())
    current = publisher.current()
    for obj in sorted(publisher.store.list(HISTORY_PREFIX), key=lambda o: o.key):
        marker = "*" if current and obj.key == current.snapshot_key else " "
        print(f"{marker} {obj.key}\t{obj.size}\t{obj.last_modified.isoformat()}")
    return 0


def cmd_rollback(settings: EtlSettings, args: argparse.Namespace) -> int:
    raise NotImplementedError("rollback is not built yet (snapshot lifecycle issue)")
