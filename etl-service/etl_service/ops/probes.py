"""`analytics-etl check-config [--probe]`: the settings, then each dependency.

Without --probe: the settings parse (load_settings already did) and the table
configuration is valid. With --probe: one line per dependency, `ok` or the
reason, reached the way the worker reaches it: the source (a connection,
`SELECT 1`, and each table of TABLES_TO_SYNC visible to the login), the state
database (a connection; migrations are not run), the object store (the
current manifest read) and, in lake mode, the lake (its process started with
LAKE_PYTHON, the catalog read). Exit 0 when all are ok, 1 when one
is unreachable (the configuration itself parsed).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from analytics_shared.probes import LAKE_SETTINGS, Probe, probe_lake, probe_store, run_probes
from etl_service.errors import TableConfigError
from etl_service.settings import EtlSettings
from etl_service.tables import table_specs

__all__ = ["check_config", "probe_database"]

PROBE_TIMEOUT_SECONDS = 5


def probe_database(url: str, tables: list[str] | None = None) -> str:
    """Connect and run SELECT 1, and see each of `tables` (`schema.table` allowed);
    returns where it connected (no password)."""
    parsed = sa.make_url(url)
    connect_args: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = PROBE_TIMEOUT_SECONDS
    elif parsed.get_backend_name() == "mssql":
        connect_args["login_timeout"] = PROBE_TIMEOUT_SECONDS
    engine = sa.create_engine(parsed, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1")).fetchall()
            inspector = sa.inspect(conn)
            missing = [
                t
                for t in tables or []
                if not inspector.has_table(
                    t.rpartition(".")[2], schema=t.rpartition(".")[0] or None
                )
            ]
        if missing:
            raise TableConfigError(
                f"{', '.join(map(repr, missing))} not found in the source: fix TABLES_TO_SYNC,"
                " or grant the login SELECT on it (setup_database.sql)"
            )
    finally:
        engine.dispose()
    return parsed.render_as_string(hide_password=True)


def _state(settings: EtlSettings) -> str:
    url = sa.make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return f"{url.database} does not exist yet (the worker creates it)"
    return probe_database(settings.resolved_database_url)


def check_config(settings: EtlSettings, *, probe: bool) -> int:
    table_specs(settings.tables_to_sync, settings.table_config)  # TableConfigError: exit 2
    settings.resolved_source_url  # noqa: B018 - ValueError when no source is configured
    if not probe:
        print("configuration ok")
        return 0
    probes: list[Probe] = [
        (
            "source",
            "SOURCE_URL / MSSQL_*",
            lambda: probe_database(settings.resolved_source_url, settings.tables_to_sync),
        ),
        ("state database", "DATABASE_URL", lambda: _state(settings)),
        ("store", "STORAGE_URL / S3_*", lambda: probe_store(settings.open_store())),
    ]
    if settings.publish_mode == "lake":
        catalog = settings.lake_catalog_url
        url = catalog.get_secret_value() if catalog else settings.resolved_database_url
        probes.append(("lake", LAKE_SETTINGS, lambda: probe_lake(settings, url)))
    return run_probes(probes)
