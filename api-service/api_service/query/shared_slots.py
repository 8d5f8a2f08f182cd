"""Per-user (and per-app) query slots counted in Redis, across every worker.

`QueryGate` (fairness.py) caps and queues queries inside one worker; with
several Gunicorn workers (and replicas) a user could otherwise run workers x
MAX_CONCURRENT_QUERIES_PER_USER at once. With `REDIS_URL` a query also takes
a lease in Redis before it runs: one sorted set per user (and per app when
MAX_CONCURRENT_QUERIES_PER_APP is set; unset, the app cap is each worker's
pool) whose members are the leases, scored by their expiry. One Lua script
takes a lease atomically only while the user (and app) holds fewer than the
cap, on Redis' clock. What must always hold:

- a lease lives `QUERY_SLOT_LEASE_SECONDS` unless renewed; each worker renews
  the leases it holds every third of that, so a killed worker's slots come
  back within one lease time, and a running query never loses its slot;
- a lease is given back when its slot is released (best effort: if that call
  fails, the lease expires);
- while Redis is unreachable the worker counts on its own (the local gate's
  caps still hold) and says so in the log, like the rate limiter; it tries
  Redis again after a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api_service.redis_outage import RedisOutage

__all__ = ["Lease", "SharedSlots"]

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i]) then return 0 end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[4])
  redis.call('PEXPIRE', key, ttl * 2)
end
return 1
"""

# KEYS: the sets; ARGV[1]: ttl; ARGV[1 + i]: the member in KEYS[i].
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return 1
"""


@dataclass(frozen=True)
class Lease:
    keys: tuple[str, ...]
    member: str


class SharedSlots:
    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        per_user: int,
        per_app: int | None,
        lease_seconds: float,
        timeout: float = 0.5,
        retry_after: float = 5.0,
    ) -> None:
        self.prefix = f"{prefix}:slots"
        self.per_user = per_user
        self.per_app = per_app
        self.lease_ms = max(1000, int(lease_seconds * 1000))
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._held: set[Lease] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self.outage = RedisOutage(
            "query_slots_redis_unavailable", "per-process query caps", retry_after
        )

    def _key(self, kind: str, name: str) -> str:
        # Hashed: bounded length, and no user id in Redis' keyspace.
        return f"{self.prefix}:{kind}:{hashlib.sha256(name.encode()).hexdigest()[:32]}"

    async def try_acquire(self, user: str, app: str) -> Lease | bool | None:
        """A lease; None when the user's (or app's) slots are all held; True
        when Redis is unreachable (the caller goes on with the local caps)."""
        if self.outage.skip():
            return True
        keys = [self._key("user", user)]
        caps = [self.per_user]
        if self.per_app is not None:
            keys.append(self._key("app", app))
            caps.append(self.per_app)
        member = f"{os.getpid()}:{uuid.uuid4().hex}"
        args: list[str | int] = [caps[0], caps[1] if len(caps) > 1 else 0, self.lease_ms, member]
        try:
            taken = await self._acquire(keys=keys, args=args)
        except (TimeoutError, RedisError, OSError) as exc:
            self.outage.failed(exc)
            return True
        if not taken:
            return None
        lease = Lease(tuple(keys), member)
        self._held.add(lease)
        self._ensure_renewer()
        return lease

    def release(self, lease: Lease) -> None:
        """Give the lease back (on the event loop; the Redis call runs in a task)."""
        if lease not in self._held:
            return
        self._held.discard(lease)
        task = asyncio.get_running_loop().create_task(self._remove(lease))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, lease: Lease) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in lease.keys:
                    pipe.zrem(key, lease.member)
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self.outage.failed(exc)  # it expires on its own

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while self._held:
            await asyncio.sleep(self.lease_ms / 3000)
            held = list(self._held)
            keys = [k for lease in held for k in lease.keys]
            members = [lease.member for lease in held for _ in lease.keys]
            if not keys:
                continue
            try:
                await self._renew(keys=keys, args=[self.lease_ms, *members])
            except (TimeoutError, RedisError, OSError) as exc:
                self.outage.failed(exc)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for lease in list(self._held):
            self._held.discard(lease)
            await self._remove(lease)
        await self._redis.aclose()
