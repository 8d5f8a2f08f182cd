"""The worker's side of the control plane: hold the ETL, run queued commands.

`analytics-etl run` takes the worker lock before it opens anything else (a
second `run` exits with one line naming the holder), marks commands a dead
worker left running as failed, and then, between cycles, runs the queued
commands in order (`between_cycles`, called by the scheduler).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from analytics_shared.errors import AnalyticsError
from analytics_shared.logging_config import get_logger
from etl_service.control.commands import Command, CommandQueue
from etl_service.control.execute import CommandRunner, Outcome
from etl_service.control.worker_lock import WorkerLock
from etl_service.errors import WorkerBusy, describe, with_remedy

if TYPE_CHECKING:
    from etl_service.settings import EtlSettings
    from etl_service.state import StateStore
    from etl_service.sync import SyncEngine

__all__ = ["WorkerControl", "hold_worker_lock"]

log = get_logger(__name__)


def hold_worker_lock(state: StateStore, command: str = "analytics-etl run") -> WorkerLock:
    """The worker lock, held by this process; WorkerBusy names whoever has it."""
    lock = WorkerLock(state)
    if lock.try_acquire("worker", command):
        return lock
    holder = lock.holder()
    who = holder.describe() if holder else "another process"
    raise WorkerBusy(
        f"another worker holds the ETL: {who}; only one `analytics-etl run` may run"
        " against a state database: stop that one first, or use it (commands are handed to it)"
    )


class WorkerControl:
    def __init__(self, settings: EtlSettings, engine: SyncEngine, lock: WorkerLock) -> None:
        self.engine = engine
        self.lock = lock
        self.queue = CommandQueue(engine.state.engine)
        self.runner = CommandRunner(settings, engine.state, engine=engine)
        self.lock_lost = False
        interrupted = self.queue.fail_interrupted()
        if interrupted:
            log.warning("commands_interrupted", commands=interrupted)

    def heartbeat(self) -> bool:
        """Refresh the lock; False once it is lost (the state database went away:
        the lock died with its connection, so another worker may hold it now).
        The caller then stops the worker; a restart takes the lock again."""
        try:
            held = self.lock.heartbeat()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("worker_heartbeat_failed", error=describe(exc))
            held = False
        if not held and not self.lock_lost:
            self.lock_lost = True
            log.error("worker_lock_lost", action="stopping: the state database dropped the lock")
            self.engine.stop_requested.set()
        return held

    def between_cycles(self) -> None:
        """Run every pending command, oldest first (the caller holds the cycle lock)."""
        while not self.engine.stop_requested.is_set():
            command = self.queue.claim_next(self.lock.identity)
            if command is None:
                return
            self._run(command)

    def _run(self, command: Command) -> None:
        log.info("command_started", command_id=command.id, kind=command.kind, args=command.args)
        # The waiting CLI prints what the worker writes here (full loads' progress).
        self.engine.syncer.progress_sink = lambda text: self.queue.set_progress(command.id, text)
        try:
            outcome = self.runner.run(command.kind, command.args)
        except Exception as exc:  # a command's failure never stops the worker
            log.exception("command_failed", command_id=command.id, kind=command.kind)
            error = str(exc) if isinstance(exc, AnalyticsError) else describe(exc)
            error = with_remedy(error, exc)
            outcome = Outcome(False, error=error)
        finally:
            self.engine.syncer.progress_sink = None
        if outcome.result.get("status") == "abandoned":
            outcome.ok, outcome.error = False, "abandoned: the worker was stopped mid-command"
        self.queue.finish(
            command.id, "done" if outcome.ok else "failed", outcome.result or None, outcome.error
        )
        self.engine.status_file.write(self.engine.state)  # e.g. a discarded dead letter
        log.info(
            "command_finished",
            command_id=command.id,
            kind=command.kind,
            ok=outcome.ok,
            error=outcome.error,
        )
