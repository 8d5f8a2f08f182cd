"""Admission control: a worker's memory for large results, handed out in bytes.

Heavy work takes a reservation from one `AdmissionGate` per worker before it
holds the memory, and gives it back when done:

- a buffered result (JSON, Arrow, Parquet) whose Arrow data passes
  LIGHT_RESULT_BYTES reserves MAX_RESULT_BYTES x its encoding's factor
  (memory_budget.ENCODE_FACTOR) before reading on, until it is encoded;
- a stream (NDJSON, CSV) reserves memory_budget.stream_reservation (one batch
  of up to MAX_RESULT_BYTES, its encoded chunk, the compressor) from opening
  until it ends, however
  slowly its client reads (Uvicorn pauses the body while the socket is full,
  so nothing else piles up).

When the gate is full, work waits up to ADMISSION_WAIT_SECONDS and is then
refused with `Busy` (503 `busy`, Retry-After), never started past the budget.
Big sorts and joins are DuckDB's: they spill to its temp directory past its
own memory_limit. What must always hold: reserved bytes never exceed the
capacity, and every reservation is released exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

from api_service.errors import Busy

__all__ = ["AdmissionGate", "Reservation"]


class AdmissionGate:
    def __init__(self, capacity: int, wait_seconds: float) -> None:
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self.reserved = 0
        self.refused = 0  # Busy answers (for metrics and tests)
        self._cond = threading.Condition()

    def _take(self, nbytes: int) -> bool:
        if self.reserved + nbytes > self.capacity:
            return False
        self.reserved += nbytes
        return True

    def _busy(self, what: str) -> Busy:
        self.refused += 1
        return Busy(
            f"this server is busy with other large results ({what} waited"
            f" {self.wait_seconds:g} s for memory); try again shortly"
        )

    def reserve(self, nbytes: int, what: str) -> Reservation:
        """Blocking (for pool threads): wait up to the admission wait, else Busy."""
        nbytes = min(nbytes, self.capacity)  # the budget makes one always fit
        deadline = time.monotonic() + self.wait_seconds
        with self._cond:
            while not self._take(nbytes):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._busy(what)
                self._cond.wait(left)
        return Reservation(self, nbytes)

    async def areserve(self, nbytes: int, what: str) -> Reservation:
        """The same for the event loop: polls instead of blocking it."""
        nbytes = min(nbytes, self.capacity)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            with self._cond:
                if self._take(nbytes):
                    return Reservation(self, nbytes)
            if time.monotonic() >= deadline:
                with self._cond:
                    raise self._busy(what)
            await asyncio.sleep(0.02)

    def _release(self, nbytes: int) -> None:
        with self._cond:
            self.reserved -= nbytes
            self._cond.notify_all()


class Reservation:
    def __init__(self, gate: AdmissionGate, nbytes: int) -> None:
        self._gate = gate
        self.nbytes = nbytes
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._gate._release(self.nbytes)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
