"""The CLI side of the control plane: hand a command to the worker, or run it.

With a worker running (its lock is held) the command becomes a row in the
queue, and the CLI waits, printing its progress and then its outcome
(`--no-wait` prints the id and returns). With no worker, the CLI takes the
worker lock itself and runs the command directly, so a worker started
meanwhile waits its turn instead of fighting over the working DuckDB.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from etl_service.control.commands import Command, CommandQueue
from etl_service.control.execute import ROLLBACK_HOLDS, CommandRunner, Outcome
from etl_service.control.worker_lock import Holder, WorkerLock
from etl_service.errors import CommandFailed, WorkerBusy
from etl_service.state import StateStore

if TYPE_CHECKING:
    from etl_service.settings import EtlSettings

__all__ = ["POLL_SECONDS", "submit_or_run"]

POLL_SECONDS = 0.5


def _say(text: str) -> None:
    print(f"analytics-etl: {text}", file=sys.stderr, flush=True)


def _print_result(result: dict[str, Any]) -> None:
    print(json.dumps(result, default=str))


def submit_or_run(
    settings: EtlSettings, kind: str, args: dict[str, Any], *, wait: bool = True, label: str
) -> int:
    state = StateStore(settings.resolved_database_url)
    try:
        lock = WorkerLock(state)
        holder = lock.holder()
        if holder is None and lock.try_acquire("command", label):
            try:
                return _direct(settings, state, kind, args)
            finally:
                lock.release()
        holder = holder or lock.holder()
        if holder is not None and holder.role == "command":
            raise WorkerBusy(
                f"busy: {holder.describe()} is running; try again when it has finished"
            )
        queue = CommandQueue(state.engine)
        command_id = queue.submit(kind, args)
        if not wait:
            print(command_id)
            return 0
        return _wait(queue, lock, command_id, holder)
    finally:
        state.close()


def _finish(outcome: Outcome, kind: str) -> int:
    if outcome.result:
        _print_result(outcome.result)
    if outcome.ok:
        if kind == "rollback":
            _say(ROLLBACK_HOLDS)
        return 0
    raise CommandFailed(f"{kind} failed: {outcome.error}")


def _direct(settings: EtlSettings, state: StateStore, kind: str, args: dict[str, Any]) -> int:
    runner = CommandRunner(settings, state)
    try:
        outcome = runner.run(kind, args)
    finally:
        runner.close()
    return _finish(outcome, kind)


def _wait(queue: CommandQueue, lock: WorkerLock, command_id: int, holder: Holder | None) -> int:
    who = holder.describe() if holder else "the running worker"
    _say(
        f"command {command_id} queued for {who}; it runs at the next cycle boundary"
        " (Ctrl-C stops waiting, not the command)"
    )
    seen: tuple[str, str | None] = ("pending", None)
    while True:
        command = queue.get(command_id)
        assert command is not None
        if command.finished:
            if command.progress and command.progress != seen[1]:
                # Finished between two polls: its last progress still gets said.
                _say(f"command {command_id} {command.progress}")
            return _finish(_outcome(command), command.kind)
        now = (command.status, command.progress)
        if now != seen:
            _say(f"command {command_id} {command.progress or command.status}")
            seen = now
        if not lock.is_held():
            return _worker_gone(queue, command_id)
        time.sleep(POLL_SECONDS)


def _outcome(command: Command) -> Outcome:
    return Outcome(command.status == "done", command.outcome or {}, command.error)


def _worker_gone(queue: CommandQueue, command_id: int) -> int:
    command = queue.get(command_id)
    assert command is not None
    if command.finished:
        return _finish(_outcome(command), command.kind)
    if command.status == "pending":
        raise CommandFailed(
            f"the worker stopped; command {command_id} stays pending and runs when a worker"
            " starts (`analytics-etl commands` shows it)"
        )
    raise CommandFailed(
        f"the worker stopped while running command {command_id}; the next worker marks it"
        " failed (it is never run twice): check `analytics-etl status`, then submit it again"
    )
