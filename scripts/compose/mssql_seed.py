"""docker compose only: prepare the SQL Server demo source, then keep changing rows.

1. Waits for SQL Server and creates the source database when it is missing.
2. Runs etl-service/scripts/setup_database.sql the way sqlcmd would (GO batches,
   $(VARIABLE) substitution): tables, updated_at triggers, snapshot isolation,
   and the ETL's read-only login.
3. Seeds the five tables once, with the rows etl_service.demo_source generates.
4. Touches READY_FILE (the compose healthcheck waits for it), then changes a few
   inventory and order rows every WRITER_INTERVAL_SECONDS until SIGTERM.

Runs in the etl-service image and connects with pymssql, the driver the ETL
uses for reflection (FreeTDS inside its wheel, no system driver). Everything it
connects with is an environment variable, see docker-compose.yml.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pymssql
import sqlalchemy as sa

from etl_service.demo_source import (
    DEMO_TABLE_NAMES,
    create_demo_source,
    demo_metadata,
    mutate_demo_rows,
)

log = logging.getLogger("mssql-seed")

STAGING_SCHEMA = "seed_staging"
_GO = re.compile(r"^\s*GO\s*(?:--.*)?$", re.IGNORECASE)
_VARIABLE = re.compile(r"\$\((\w+)\)")


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise SystemExit(f"mssql-seed: set {name}")
    return value


# FreeTDS's default encryption level: TLS whenever the server offers it (SQL
# Server does, with the container's self-signed certificate), and FreeTDS does
# not check the certificate unless a freetds.conf names a CA file. A local demo.


def sqlalchemy_url(database: str) -> sa.URL:
    return sa.URL.create(
        "mssql+pymssql",
        username="sa",
        password=env("MSSQL_SA_PASSWORD"),
        host=env("MSSQL_HOST", "mssql"),
        port=int(env("MSSQL_PORT", "1433")),
        database=database,
    )


def sqlcmd_batches(script: str, variables: Mapping[str, str]) -> Iterator[str]:
    """Split a sqlcmd script on GO lines and substitute $(NAME) like sqlcmd -v does."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise SystemExit(f"mssql-seed: the script needs the variable {name}")
        return variables[name]

    lines: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if stripped.lower().startswith(":on error"):
            continue  # errors always stop this runner
        if stripped.startswith(":"):
            raise SystemExit(f"mssql-seed: unsupported sqlcmd command {stripped!r}")
        if _GO.match(line):
            if any(part.strip() for part in lines):
                yield _VARIABLE.sub(substitute, "\n".join(lines))
            lines = []
            continue
        lines.append(line)
    if any(part.strip() for part in lines):
        yield _VARIABLE.sub(substitute, "\n".join(lines))


def run_script(connection: pymssql.Connection, script: str, variables: Mapping[str, str]) -> None:
    cursor = connection.cursor()
    for batch in sqlcmd_batches(script, variables):
        cursor.execute(batch)  # no parameters: pymssql leaves '%' in the batch alone
        while cursor.nextset():  # later statements' errors surface here
            pass
    cursor.close()


def wait_for_server(timeout: float) -> pymssql.Connection:
    deadline = time.monotonic() + timeout
    while True:
        try:
            # autocommit: CREATE DATABASE and parts of the setup script refuse
            # to run inside a transaction.
            return pymssql.connect(
                server=env("MSSQL_HOST", "mssql"),
                port=env("MSSQL_PORT", "1433"),
                user="sa",
                password=env("MSSQL_SA_PASSWORD"),
                database="master",
                autocommit=True,
                login_timeout=5,
            )
        except pymssql.Error as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"mssql-seed: SQL Server did not answer: {exc}") from None
            log.info("waiting for SQL Server")
            time.sleep(3)


def seed(engine: sa.Engine, database: str, scale: int) -> None:
    """Fill the (empty) dbo tables with the demo rows, through a staging schema.

    create_demo_source (re)creates its tables with SQLAlchemy's types; the dbo
    tables keep the ones setup_database.sql gave them, and the copy below goes
    through their triggers like any other write.
    """
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT COUNT(*) FROM dbo.products")).scalar():
            log.info("source already seeded")
            return
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"IF SCHEMA_ID(N'{STAGING_SCHEMA}') IS NULL EXEC(N'CREATE SCHEMA {STAGING_SCHEMA}')"
            )
        )
    create_demo_source(
        sqlalchemy_url(database).render_as_string(hide_password=False),
        scale=scale,
        schema=STAGING_SCHEMA,
    ).dispose()
    meta = demo_metadata()
    with engine.begin() as conn:
        for name in DEMO_TABLE_NAMES:
            columns = ", ".join(f"[{column.name}]" for column in meta.tables[name].columns)
            conn.execute(
                sa.text(
                    f"INSERT INTO dbo.[{name}] ({columns})"
                    f" SELECT {columns} FROM {STAGING_SCHEMA}.[{name}]"
                )
            )
        for name in reversed(DEMO_TABLE_NAMES):
            conn.execute(sa.text(f"DROP TABLE {STAGING_SCHEMA}.[{name}]"))
        conn.execute(sa.text(f"DROP SCHEMA {STAGING_SCHEMA}"))
    log.info("source seeded (scale %d)", scale)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    database = env("DATABASE_NAME", "analytics_source")
    if not re.fullmatch(r"\w+", database):
        raise SystemExit("mssql-seed: DATABASE_NAME must be a plain identifier")
    variables = {
        "DATABASE_NAME": database,
        "ETL_LOGIN": env("ETL_LOGIN"),
        "ETL_PASSWORD": env("ETL_PASSWORD"),
    }
    if "'" in variables["ETL_PASSWORD"] or not re.fullmatch(r"\w+", variables["ETL_LOGIN"]):
        raise SystemExit("mssql-seed: ETL_LOGIN must be an identifier; ETL_PASSWORD has no quote")
    ready = Path(env("READY_FILE", "/tmp/mssql-seed.ready"))
    ready.unlink(missing_ok=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    admin = wait_for_server(float(env("WAIT_SECONDS", "180")))
    admin.cursor().execute(f"IF DB_ID(N'{database}') IS NULL CREATE DATABASE [{database}]")
    run_script(admin, Path(env("SETUP_SQL")).read_text(encoding="utf-8"), variables)
    admin.close()
    log.info("setup_database.sql applied to %s", database)

    engine = sa.create_engine(sqlalchemy_url(database), pool_pre_ping=True)
    seed(engine, database, int(env("SEED_SCALE", "1")))
    ready.touch()

    interval = float(env("WRITER_INTERVAL_SECONDS", "3"))
    rng = random.Random()
    log.info("writer started: a few rows change every %.1f s", interval)
    while not stop.wait(interval):
        try:
            mutate_demo_rows(engine, rng)
        except sa.exc.DBAPIError as exc:  # SQL Server restarting: keep going
            log.warning("write failed, retrying: %s", exc.orig)
    engine.dispose()
    log.info("writer stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
