"""Mutation testing of the modules that hold the guarantees (`make mutation`).

For each module, Cosmic Ray makes one small change at a time (a `>=` becomes
`>`, a constant changes, a condition is negated, ...) and runs only the fast
tests that cover that module; a change that no test notices "survives". The
score is killed / (killed + survived); a mutant that times out counts as
killed (Cosmic Ray's rule: the tests noticed something). Prints the score per module and every
surviving mutant as a diff; docs/testing.md records the last results.

Each mutant's tests run warm: a server (scripts/mutation_warm.py) imports
pytest and the third-party packages once, then forks per mutant and imports
the repository's modules afresh (`--cold` starts pytest per mutant instead,
several seconds more each).

It works in a scratch copy of the repository (tracked and new files), so the
working tree is never modified and you can keep working while it runs:

    python scripts/mutation.py                  # every module below
    python scripts/mutation.py sql_guard tokens # some of them (by short name)
    python scripts/mutation.py --list           # the modules and their tests
    python scripts/mutation.py tokens --keep runs/      # keep the session databases
    python scripts/mutation.py tokens --survivors-of runs/  # rerun only the survivors
    python scripts/mutation.py access_rewrite --budget-minutes 30  # a partial run

`--survivors-of DIR` re-tests only the mutants that survived in DIR's kept
session of the same module (after tests were added; adding tests cannot revive
a killed mutant) and reports the combined result; the module itself must be
unchanged since (mutants are matched by position). `--budget-minutes` stops a
module after that long; the mutants run so far (Cosmic Ray picks them in random
order, so they are a random sample) are reported as a partial result.

Cosmic Ray is pinned in constraints.txt and installed from
requirements-mutation.txt (`make mutation` does both).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Target:
    module: str  # path from the repository root
    tests: tuple[str, ...]  # the fast tests that cover it (paths or node ids)


A, E, S = "api-service", "etl-service", "shared"
_ACCESS_TESTS = (
    f"{A}/tests/test_pinned_access.py",
    f"{A}/tests/test_access_leaks.py",
    f"{A}/tests/test_access_bypass.py",
    f"--deselect={A}/tests/test_access_bypass.py::test_row_filters_hold_under_gunicorn",
    f"{A}/tests/test_access_properties.py",
)
# The direct check_query tests first: with -x most mutants stop there, before
# the tests through HTTP and the timeouts.
_GUARD_TESTS = (
    f"{A}/tests/test_sql_limits.py",  # the guard's limits, through check_query
    f"{A}/tests/test_pinned_sql_guard.py",
    f"{A}/tests/test_sql_guard_attacks.py",
    f"{A}/tests/test_query_guard_path.py",
)
TARGETS: dict[str, Target] = {
    "incremental": Target(
        f"{E}/etl_service/incremental.py",
        (f"{E}/tests/test_pinned_incremental.py",),
    ),
    "warehouse": Target(
        f"{E}/etl_service/warehouse.py",
        (f"{E}/tests/test_pinned_warehouse.py", f"{E}/tests/test_warehouse_merge.py"),
    ),
    "sql_guard": Target(f"{A}/api_service/query/sql_guard.py", _GUARD_TESTS),
    # The guard's parts: its tests reach them through check_query; their pinned
    # tests (exact numbers and boundaries) first, the fastest to fail.
    "sql_limits": Target(
        f"{A}/api_service/query/sql_limits.py",
        (f"{A}/tests/test_pinned_sql_limits.py", *_GUARD_TESTS),
    ),
    "bind_size": Target(
        f"{A}/api_service/query/bind_size.py",
        (f"{A}/tests/test_pinned_bind_size.py", *_GUARD_TESTS),
    ),
    "sql_tree": Target(f"{A}/api_service/query/sql_tree.py", _GUARD_TESTS),
    "tokens": Target(
        f"{A}/api_service/auth/tokens.py",
        (f"{A}/tests/test_auth_tokens.py", f"{A}/tests/test_pinned_auth.py"),
    ),
    "rate_limit": Target(
        f"{A}/api_service/auth/rate_limit.py",
        (
            f"{A}/tests/test_pinned_rate_limit.py",
            f"{A}/tests/test_rate_limit.py::test_local_limiter_is_a_sliding_window",
            f"{A}/tests/test_rate_limit.py::test_local_limiter_bounds_the_users_it_remembers",
            f"{A}/tests/test_rate_limit.py::test_redis_limiter_is_exact_under_concurrency",
            f"{A}/tests/test_rate_limit.py::test_redis_down_falls_back_to_a_local_limiter",
        ),
    ),
    # Redis down: skipped for a few seconds, warned about once a minute (the
    # rate limiter's and the shared query slots' fallback).
    "redis_outage": Target(
        f"{A}/api_service/redis_outage.py", (f"{A}/tests/test_pinned_rate_limit.py",)
    ),
    "snapshot_file": Target(
        f"{S}/analytics_shared/snapshot_file.py",
        (f"{S}/tests/test_snapshot_file.py", f"{S}/tests/test_pinned_snapshot_file.py"),
    ),
    "snapshots": Target(
        f"{A}/api_service/data/snapshots.py",
        (f"{A}/tests/test_snapshots.py",),
    ),
    "manifest": Target(
        f"{S}/analytics_shared/manifest.py",
        (
            f"{S}/tests/test_manifest.py",
            f"{S}/tests/test_pinned_manifest.py",
            f"{S}/tests/test_snapshot_file.py",
            f"{S}/tests/test_pinned_snapshot_file.py",
        ),
    ),
    "whitelist": Target(
        f"{S}/analytics_shared/whitelist.py",
        (
            f"{S}/tests/test_pinned_whitelist.py",
            f"{S}/tests/test_settings_and_whitelist.py",
            f"{S}/tests/test_whitelist_schema.py",
        ),
    ),
    "principal": Target(
        f"{A}/api_service/auth/principal.py",
        (
            f"{A}/tests/test_pinned_principal.py",
            f"{A}/tests/test_pinned_api.py",
            f"{A}/tests/test_api_keys.py",
        ),
    ),
    # Row filters and column policies: every test goes through the API in-process
    # (module-scoped app); the Gunicorn variant runs the same rewrite, so it is left out.
    "access_rules": Target(f"{A}/api_service/access/rules.py", _ACCESS_TESTS),
    "access_rewrite": Target(f"{A}/api_service/access/rewrite.py", _ACCESS_TESTS),
}


def scratch_copy(dest: Path) -> None:
    """The repository's tracked and untracked (not ignored) files, as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


Span = tuple[tuple[int, int], tuple[int, int]]


def annotation_spans(path: Path) -> list[Span]:
    """Where the type annotations are: with `from __future__ import annotations`
    they are never evaluated, so a mutant inside one is equivalent by construction."""
    spans: list[Span] = []
    for node in ast.walk(ast.parse(path.read_text())):
        notes = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            notes.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            notes.append(node.returns)
        for note in notes:
            end = (note.end_lineno or note.lineno, note.end_col_offset or 0)
            spans.append(((note.lineno, note.col_offset), end))
    return spans


def skip_annotation_mutants(session: Path, module: Path) -> int:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = annotation_spans(module)
    skipped = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            mutation = item.mutations[0]
            start, end = tuple(mutation.start_pos), tuple(mutation.end_pos)
            if any(a <= start and end <= b for a, b in spans):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                skipped += 1
    return skipped


def pytest_args(target: Target) -> list[str]:
    # Without the plugins the selected tests do not use: half the start-up time.
    return [
        *("-x", "-q", "-p", "no:cacheprovider", "-p", "no:schemathesis"),
        *("-p", "no:hypothesispytest", "-m", "not slow", *target.tests),
    ]


def config(target: Target, copy: Path, timeout: float, command: str) -> str:
    return (
        "[cosmic-ray]\n"
        f'module-path = "{copy / target.module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


@contextmanager
def test_command(
    name: str, target: Target, copy: Path, env: dict[str, str], cold: bool
) -> Iterator[str]:
    """The shell command Cosmic Ray runs per mutant: pytest itself (cold), or a
    client of a warm server forked per mutant (scripts/mutation_warm.py)."""
    args = pytest_args(target)
    if cold:
        yield shlex.join([sys.executable, "-m", "pytest", *args])
        return
    warm = copy / "scripts" / "mutation_warm.py"
    sock, log = copy / f"mutation-{name}.sock", copy / f"mutation-{name}.log"
    server = subprocess.Popen(
        [sys.executable, str(warm), "serve", str(sock), str(copy), str(log), "--", *args],
        cwd=copy,
        env=env,
    )
    try:
        while not sock.exists():  # it first runs the tests once, unmutated
            if server.poll() is not None:
                raise SystemExit(f"{name}: the warm test server stopped (see {log})")
            time.sleep(0.2)
        yield shlex.join([sys.executable, "-S", str(warm), "client", str(sock)])
    finally:
        server.terminate()
        server.wait()


MutantKey = tuple[str, int, tuple[int, ...], tuple[int, ...]]


def _mutant_key(mutation: Any) -> MutantKey:
    """A mutant's identity across sessions (job ids differ from one `init` to the
    next): its operator and position, so the module must not change in between."""
    return (
        mutation.operator_name,
        mutation.occurrence,
        tuple(mutation.start_pos),
        tuple(mutation.end_pos),
    )


@dataclass
class Outcome:
    killed: int = 0
    survived: int = 0
    survivors: list[str] = field(default_factory=list)
    survivor_keys: set[MutantKey] = field(default_factory=set)
    pending: int = 0  # not run (a partial run)


def read_session(session: Path, module: str) -> Outcome:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    outcome = Outcome()
    with use_db(str(session), WorkDB.Mode.open) as db:
        outcome.pending = len(db.pending_work_items)
        for item, result in db.completed_work_items:
            if result.worker_outcome != WorkerOutcome.NORMAL:
                continue  # skipped, or could not be run at all: neither killed nor survived
            mutation = item.mutations[0]
            if result.test_outcome == TestOutcome.SURVIVED:
                outcome.survived += 1
                outcome.survivor_keys.add(_mutant_key(mutation))
                where = f"{module}:{mutation.start_pos[0]}"
                outcome.survivors.append(f"{where} {mutation.operator_name}\n{result.diff or ''}")
            elif result.test_outcome == TestOutcome.KILLED:
                outcome.killed += 1
    return outcome


def skip_all_but(session: Path, keys: set[MutantKey]) -> int:
    """Leave pending only the mutants in `keys` (the survivors of an earlier run)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    left = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            if _mutant_key(item.mutations[0]) in keys:
                left += 1
            else:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    return left


def exec_session(cmd: list[str], copy: Path, env: dict[str, str], budget: float | None) -> None:
    """`cosmic-ray exec`, stopped (with the test it runs) after `budget` seconds."""
    process = subprocess.Popen(cmd, cwd=copy, env=env, start_new_session=True)
    try:
        code = process.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        print(f"budget of {budget / 60:.0f} minutes used up: a partial run", flush=True)
        return
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def run_target(
    name: str, target: Target, copy: Path, args: argparse.Namespace
) -> tuple[Outcome, str]:
    cfg = copy / f"mutation-{name}.toml"
    session = copy / f"mutation-{name}.sqlite"
    env = {
        **os.environ,
        # The copy's packages before the editable installs of the working tree.
        "PYTHONPATH": os.pathsep.join(str(copy / p) for p in (S, E, A, ".")),
        # A mutant of the same size written within the same second as the last
        # one must not be read from a stale .pyc.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    with test_command(name, target, copy, env, args.cold) as command:
        cfg.write_text(config(target, copy, args.timeout, command))
        return _run_session(name, target, copy, args, cfg, session, env)


def _run_session(
    name: str,
    target: Target,
    copy: Path,
    args: argparse.Namespace,
    cfg: Path,
    session: Path,
    env: dict[str, str],
) -> tuple[Outcome, str]:
    # The tests must pass on the unmutated copy, or every mutant would look killed.
    subprocess.run([str(BIN / "cosmic-ray"), "baseline", str(cfg)], cwd=copy, env=env, check=True)
    subprocess.run(
        [str(BIN / "cosmic-ray"), "init", str(cfg), str(session)], cwd=copy, env=env, check=True
    )
    skipped = skip_annotation_mutants(session, copy / target.module)
    print(f"{name}: {skipped} mutants in annotations skipped (equivalent)", flush=True)
    earlier: Outcome | None = None
    if args.survivors_of:
        earlier = read_session(Path(args.survivors_of) / f"mutation-{name}.sqlite", target.module)
        left = skip_all_but(session, earlier.survivor_keys)
        print(f"{name}: re-testing the {left} survivors of the kept run", flush=True)
    pristine = (copy / target.module).read_bytes()
    budget = args.budget_minutes * 60 if args.budget_minutes else None
    try:
        exec_session([str(BIN / "cosmic-ray"), "exec", str(cfg), str(session)], copy, env, budget)
    finally:
        (copy / target.module).write_bytes(pristine)  # a stopped run may leave a mutant in place
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(session, Path(args.keep) / session.name)
    outcome = read_session(session, target.module)
    note = ""
    if earlier is not None:
        outcome.killed += earlier.killed
        outcome.pending += earlier.pending
        note = f"{earlier.killed} killed in the kept run, {len(earlier.survivor_keys)} re-tested"
    if outcome.pending:
        note = f"{note}; " if note else ""
        note += f"partial: {outcome.pending} mutants not run"
    return outcome, note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"short names: {', '.join(TARGETS)}")
    parser.add_argument("--list", action="store_true", help="show the modules and their tests")
    parser.add_argument(
        "--cold", action="store_true", help="start pytest afresh per mutant (no warm server)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    parser.add_argument("--keep", metavar="DIR", help="keep each module's session database here")
    parser.add_argument(
        "--survivors-of", metavar="DIR", help="re-test only the survivors kept in DIR (--keep)"
    )
    parser.add_argument(
        "--budget-minutes", type=float, help="stop each module after this long (partial result)"
    )
    args = parser.parse_args()
    names = args.modules or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown modules {unknown}; choose from {', '.join(TARGETS)}")
    if args.list:
        for name in names:
            print(f"{name}: {TARGETS[name].module}\n  " + "\n  ".join(TARGETS[name].tests))
        return 0
    results: dict[str, tuple[Outcome, str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copy = Path(tmp)
        scratch_copy(copy)
        for name in names:
            started = time.monotonic()
            outcome, note = run_target(name, TARGETS[name], copy, args)
            elapsed = time.monotonic() - started
            results[name] = (outcome, note, elapsed)
            print(f"\n== {name}: {len(outcome.survivors)} surviving mutants", flush=True)
            for survivor in outcome.survivors:
                print(survivor)
    print("\nmodule            killed  survived  score   minutes")
    for name, (outcome, note, elapsed) in results.items():
        total = outcome.killed + outcome.survived
        score = 100.0 * outcome.killed / total if total else 100.0
        print(
            f"{name:<16} {outcome.killed:>7} {outcome.survived:>9} {score:>6.1f}%"
            f" {elapsed / 60:>8.1f}  {note}".rstrip()
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
