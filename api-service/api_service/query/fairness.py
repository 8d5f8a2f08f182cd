"""Who may start a query now: per-user and per-app caps with fair queuing.

One `QueryGate` per worker process guards its query pool. A query holds a
slot from admission until its pool work has really ended (an abandoned,
timed-out query keeps its slot until DuckDB lets go of the thread; a stream
keeps it until it closes), so a caller cannot pile up work behind the
deadline. What must always hold:

- at most `capacity` (the pool size) queries run; of them at most `per_user`
  of one user and `per_app` of one application;
- the others wait, and a freed slot goes to the waiting *user* with the
  fewest queries running (ties in round-robin turn, among users whose caps
  allow one more), so one user's backlog never delays another user's query
  by more than one turn;
- a user may have at most `per_user_queue` queries waiting: past that the
  request is refused at once (429 `too_many_concurrent_queries`, Retry-After);
- a waiter whose deadline passes leaves the queue with 503 `queue_timeout`;
- with `shared` (Redis, shared_slots.py) the per-user and per-app caps hold
  across all workers: a query admitted here also takes a lease there; when
  the user's slots are all held by other workers it gives its local slot
  back and tries again every `SHARED_RETRY_SECONDS` (counted as waiting)
  until its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from api_service.errors import QueueTimeout, TooManyConcurrentQueries
from api_service.query.shared_slots import Lease, SharedSlots

__all__ = ["SHARED_RETRY_SECONDS", "QueryGate", "Slot"]

SHARED_RETRY_SECONDS = 0.1


@dataclass(eq=False)
class Slot:
    user: str
    app: str
    admitted: asyncio.Future[None] | None = None
    released: bool = field(default=False)
    lease: Lease | None = None  # the slot's lease in Redis (shared caps)


class QueryGate:
    def __init__(
        self,
        capacity: int,
        per_user: int,
        per_app: int,
        per_user_queue: int,
        shared: SharedSlots | None = None,
    ) -> None:
        self.capacity = capacity
        self.per_user = per_user
        self.per_app = per_app
        self.per_user_queue = per_user_queue
        self.shared = shared
        self.running = 0
        self._parked: dict[str, int] = {}  # per user: waiting for a shared slot
        self._users: dict[str, int] = {}  # running, per user
        self._apps: dict[str, int] = {}  # running, per app
        self._waiting: OrderedDict[str, deque[Slot]] = OrderedDict()

    def _may_run(self, slot: Slot) -> bool:
        return (
            self.running < self.capacity
            and self._users.get(slot.user, 0) < self.per_user
            and self._apps.get(slot.app, 0) < self.per_app
        )

    def _start(self, slot: Slot) -> None:
        self.running += 1
        self._users[slot.user] = self._users.get(slot.user, 0) + 1
        self._apps[slot.app] = self._apps.get(slot.app, 0) + 1

    async def acquire(self, user: str, app: str, timeout: float) -> Slot:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            slot = await self._acquire_local(user, app, deadline - loop.time())
            if self.shared is None:
                return slot
            try:
                lease = await self.shared.try_acquire(user, app)
            except BaseException:
                self.release(slot)
                raise
            if lease is not None:
                slot.lease = lease if isinstance(lease, Lease) else None
                return slot
            # Every slot of this user (or app) is held by other workers.
            self.release(slot)
            if self._waiting_count(user) >= self.per_user_queue:
                raise self._too_many()
            if deadline - loop.time() <= SHARED_RETRY_SECONDS:
                raise self._queue_timeout()
            self._parked[user] = self._parked.get(user, 0) + 1
            try:
                await asyncio.sleep(SHARED_RETRY_SECONDS)
            finally:
                self._parked[user] -= 1
                if not self._parked[user]:
                    del self._parked[user]

    def _waiting_count(self, user: str) -> int:
        return len(self._waiting.get(user, ())) + self._parked.get(user, 0)

    def _too_many(self) -> TooManyConcurrentQueries:
        return TooManyConcurrentQueries(
            f"this user already has {self.per_user} queries running and"
            f" {self.per_user_queue} waiting; wait for one to finish",
            headers={"Retry-After": "1"},
        )

    def _queue_timeout(self) -> QueueTimeout:
        return QueueTimeout(
            "every query slot this caller may use stayed busy until the"
            " request's deadline; try again",
            headers={"Retry-After": "2"},
        )

    async def _acquire_local(self, user: str, app: str, timeout: float) -> Slot:
        slot = Slot(user, app)
        queue = self._waiting.get(user)
        if queue is None and self._may_run(slot):
            self._start(slot)
            return slot
        if self._waiting_count(user) >= self.per_user_queue:
            raise self._too_many()
        slot.admitted = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user, deque()).append(slot)
        self._dispatch()  # (caps of other users may leave room right now)
        try:
            await asyncio.wait_for(asyncio.shield(slot.admitted), max(0.0, timeout))
        except BaseException as exc:
            if slot.admitted.done():  # admitted at the last moment: give the slot back
                self.release(slot)
            else:
                self._unqueue(slot)
            if isinstance(exc, TimeoutError):
                raise self._queue_timeout() from None
            raise
        return slot

    def release(self, slot: Slot) -> None:
        """Idempotent; call on the event loop."""
        if slot.released:
            return
        slot.released = True
        if slot.lease is not None and self.shared is not None:
            self.shared.release(slot.lease)
        self.running -= 1
        for counts, key in ((self._users, slot.user), (self._apps, slot.app)):
            left = counts.get(key, 1) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
        self._dispatch()

    def _unqueue(self, slot: Slot) -> None:
        queue = self._waiting.get(slot.user)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(slot)
        if not queue:
            del self._waiting[slot.user]

    def _dispatch(self) -> None:
        while self.running < self.capacity:
            # The eligible user with the fewest queries running; ties in turn order.
            eligible = [u for u, queue in self._waiting.items() if self._may_run(queue[0])]
            if not eligible:
                return
            chosen = min(eligible, key=lambda u: self._users.get(u, 0))
            queue = self._waiting.pop(chosen)
            slot = queue.popleft()
            if queue:
                self._waiting[chosen] = queue  # back of the line: the next user goes first
            assert slot.admitted is not None
            self._start(slot)
            slot.admitted.set_result(None)
