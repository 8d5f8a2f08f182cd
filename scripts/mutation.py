"""Mutation testing of the modules that hold the guarantees (`make mutation`).

For each module, Cosmic Ray makes one small change at a time (a `>=` becomes
`>`, a constant changes, a condition is negated, ...) and runs only the fast
tests that cover that module; a change that no test notices "survives". The
score is killed / (killed + survived); a mutant that times out counts as
killed (Cosmic Ray's rule: the tests noticed something). Prints the score per module and every
surviving mutant as a diff; docs/testing.md records the last results.

It works in a scratch copy of the repository (tracked and new files), so the
working tree is never modified and you can keep working while it runs:

    python scripts/mutation.py                  # every module below
    python scripts/mutation.py sql_guard tokens # some of them (by short name)
    python scripts/mutation.py --list           # the modules and their tests

With `--workdir DIR` the copy and each module's Cosmic Ray session are kept
in DIR; `--survivors-only` then runs again only the mutants that survived
the last run there, against the tests as they are now. Tests only ever get
added, so a killed mutant stays killed and the result equals a full run's; the
script refuses when the module itself changed since that run (the mutants'
positions would be stale).

Cosmic Ray is pinned in constraints.txt and installed from
requirements-mutation.txt (`make mutation` does both).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Target:
    module: str  # path from the repository root
    tests: tuple[str, ...]  # the fast tests that cover it (paths or node ids)


A, E, S = "api-service", "etl-service", "shared"
TARGETS: dict[str, Target] = {
    "incremental": Target(
        f"{E}/etl_service/incremental.py",
        (f"{E}/tests/test_pinned_incremental.py",),
    ),
    "warehouse": Target(
        f"{E}/etl_service/warehouse.py",
        (f"{E}/tests/test_pinned_warehouse.py", f"{E}/tests/test_warehouse_merge.py"),
    ),
    "sql_guard": Target(
        f"{A}/api_service/query/sql_guard.py",
        (f"{A}/tests/test_sql_guard_attacks.py", f"{A}/tests/test_query_guard_path.py"),
    ),
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
        (f"{S}/tests/test_settings_and_whitelist.py", f"{S}/tests/test_whitelist_schema.py"),
    ),
    "principal": Target(
        f"{A}/api_service/auth/principal.py",
        (f"{A}/tests/test_pinned_api.py", f"{A}/tests/test_api_keys.py"),
    ),
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


def config(target: Target, copy: Path, timeout: float, server: Path) -> str:
    tests = " ".join(target.tests)
    # Without the plugins the selected tests do not use: half the start-up time;
    # through the warm pytest (scripts/warm_pytest.py): most of the other half.
    command = (
        f"{sys.executable} {copy / 'scripts' / 'warm_pytest.py'} run {server} --"
        " -x -q -p no:cacheprovider -p no:schemathesis"
        f" -p no:hypothesispytest -m 'not slow' {tests}"
    )
    return (
        "[cosmic-ray]\n"
        f'module-path = "{copy / target.module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def precompile(copy: Path, module: Path) -> None:
    """Compile the copy's code once, so each run does not compile it again; the
    mutated module has no compiled form (it is read from source every run)."""
    import compileall
    import importlib.util

    for folder in (S, E, A, "testsupport"):
        compileall.compile_dir(copy / folder, quiet=1)
    compileall.compile_file(copy / "conftest.py", quiet=1)
    Path(importlib.util.cache_from_source(str(module))).unlink(missing_ok=True)


def forget_survivors(session: Path) -> int:
    """Mark the mutants that survived as not yet run, so `exec` runs them again."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(session)) as db, db:
        return db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount


def run_target(
    name: str, target: Target, copy: Path, timeout: float, *, survivors_only: bool = False
) -> tuple[int, int, list[str]]:
    cfg = copy / f"mutation-{name}.toml"
    server = copy / f"warm-{name}.sock"
    cfg.write_text(config(target, copy, timeout, server))
    session = copy / f"mutation-{name}.sqlite"
    env = {
        **os.environ,
        # The copy's packages before the editable installs of the working tree.
        "PYTHONPATH": os.pathsep.join(str(copy / p) for p in (S, E, A, ".")),
        # Never a cached compilation of a mutant (see precompile).
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    precompile(copy, copy / target.module)
    with warm_pytest(copy, server, env):
        return _run_session(name, target, copy, cfg, session, env, survivors_only)


@contextlib.contextmanager
def warm_pytest(copy: Path, server: Path, env: dict[str, str]) -> Iterator[None]:
    """The warm pytest server for this module's runs, stopped afterwards."""
    server.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(copy / "scripts" / "warm_pytest.py"), "serve", str(server)],
        cwd=copy,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not server.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if not server.exists():  # the test command falls back to a cold pytest
            print("warm pytest did not start; every run starts cold", flush=True)
        yield
    finally:
        proc.kill()
        proc.wait()
        server.unlink(missing_ok=True)


def _run_session(
    name: str,
    target: Target,
    copy: Path,
    cfg: Path,
    session: Path,
    env: dict[str, str],
    survivors_only: bool,
) -> tuple[int, int, list[str]]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    digest_file = copy / f"mutation-{name}.module-sha256"
    digest = hashlib.sha256((copy / target.module).read_bytes()).hexdigest()
    # The tests must pass on the unmutated copy, or every mutant would look killed.
    subprocess.run([str(BIN / "cosmic-ray"), "baseline", str(cfg)], cwd=copy, env=env, check=True)
    if survivors_only:
        if not session.exists() or not digest_file.exists():
            sys.exit(f"{name}: no earlier run in this --workdir to take the survivors from")
        if digest_file.read_text() != digest:
            sys.exit(f"{name}: {target.module} changed since the last run; run it in full")
        print(f"{name}: running again the {forget_survivors(session)} survivors", flush=True)
    else:
        session.unlink(missing_ok=True)
        subprocess.run(
            [str(BIN / "cosmic-ray"), "init", str(cfg), str(session)], cwd=copy, env=env, check=True
        )
        digest_file.write_text(digest)
        skipped = skip_annotation_mutants(session, copy / target.module)
        print(f"{name}: {skipped} mutants in annotations skipped (equivalent)", flush=True)
    subprocess.run(
        [str(BIN / "cosmic-ray"), "exec", str(cfg), str(session)], cwd=copy, env=env, check=True
    )
    killed = survived = 0
    survivors: list[str] = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome != WorkerOutcome.NORMAL:
                continue  # the mutant could not be run at all: neither killed nor survived
            if result.test_outcome == TestOutcome.SURVIVED:
                survived += 1
                mutation = item.mutations[0]
                where = f"{target.module}:{mutation.start_pos[0]}"
                survivors.append(f"{where} {mutation.operator_name}\n{result.diff or ''}")
            elif result.test_outcome == TestOutcome.KILLED:
                killed += 1
    return killed, survived, survivors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"short names: {', '.join(TARGETS)}")
    parser.add_argument("--list", action="store_true", help="show the modules and their tests")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    parser.add_argument(
        "--workdir", type=Path, help="keep the copy and the sessions here (default: discarded)"
    )
    parser.add_argument(
        "--survivors-only",
        action="store_true",
        help="with --workdir: run again only the mutants that survived the last run there",
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
    if args.survivors_only and args.workdir is None:
        parser.error("--survivors-only needs the --workdir of an earlier run")
    results: dict[str, tuple[int, int, float]] = {}
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            copy = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mutation-")))
        else:
            copy = args.workdir.resolve()
            copy.mkdir(parents=True, exist_ok=True)
        scratch_copy(copy)
        for name in names:
            started = time.monotonic()
            killed, survived, survivors = run_target(
                name, TARGETS[name], copy, args.timeout, survivors_only=args.survivors_only
            )
            elapsed = time.monotonic() - started
            results[name] = (killed, survived, elapsed)
            print(f"\n== {name}: {len(survivors)} surviving mutants", flush=True)
            for survivor in survivors:
                print(survivor)
    print("\nmodule            killed  survived  score   minutes")
    for name, (killed, survived, elapsed) in results.items():
        total = killed + survived
        score = 100.0 * killed / total if total else 100.0
        print(f"{name:<16} {killed:>7} {survived:>9} {score:>6.1f}% {elapsed / 60:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
