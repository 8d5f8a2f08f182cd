"""Data-version events for one worker: who is listening, and when to wake them.

`VersionEvents` watches the worker's `SnapshotManager` (an attribute read, a
few times a second) and wakes every open `/events` stream when the version
in service changes; it bounds the streams per worker (`EVENTS_MAX_CONNECTIONS`)
and per caller on the worker (`EVENTS_MAX_CONNECTIONS_PER_USER`: one user with
one ticket opened every slot of both workers in a second, and every other
user's `/events` was refused).
The HTTP side (tickets, the stream format) is routes/events.py.

What must always hold: a stream learns the version this worker serves on
connect and every later one it swaps to; a slot taken by `acquire()` is given
back exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from api_service.data.snapshots import SnapshotManager
from api_service.errors import TooManyConnections, TooManyUserConnections

__all__ = ["VersionEvents"]


class VersionEvents:
    def __init__(
        self,
        snapshots: SnapshotManager,
        max_connections: int,
        per_user: int | None = None,
        watch_seconds: float = 0.2,
    ) -> None:
        self.snapshots = snapshots
        self.max_connections = max_connections
        self.per_user = per_user or max_connections
        self._by_user: Counter[str] = Counter()
        self.watch_seconds = watch_seconds
        self.connections = 0
        self.closed = False
        self.version: str | None = None
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._observe()
        self._watcher = asyncio.create_task(self._watch())

    async def close(self) -> None:
        self.closed = True
        self._wake()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def acquire(self, user: str) -> None:
        if self._by_user[user] >= self.per_user:
            raise TooManyUserConnections(
                f"you have {self.per_user} open event streams on this server, the most one"
                " caller may hold; close one (one stream per page is enough)"
            )
        if self.connections >= self.max_connections:
            raise TooManyConnections(
                f"this server has {self.max_connections} open event streams, its limit; retry later"
            )
        self.connections += 1
        self._by_user[user] += 1

    def release(self, user: str) -> None:
        self.connections -= 1
        self._by_user[user] -= 1
        if self._by_user[user] <= 0:
            del self._by_user[user]

    def changed(self) -> asyncio.Event:
        """The event the next version change (or close) sets; take it before reading `version`."""
        return self._changed

    def _wake(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    def _observe(self) -> None:
        snap = self.snapshots.current
        version = snap.version if snap is not None else None
        if version is not None and version != self.version:
            self.version = version
            self._wake()

    async def _watch(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.watch_seconds)
            self._observe()
