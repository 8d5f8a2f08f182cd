"""The ETL's errors, built on `analytics_shared.errors`.

    AnalyticsError                       analytics_shared.errors
    ├── TransientError                   retrying later may succeed; `retry.is_transient`
    │   │                                decides by this type, never by message
    │   ├── SourceUnavailable            also a SourceError (below)
    │   └── StoreUnavailable             analytics_shared.object_store (also a StoreError)
    ├── ConfigurationError
    │   ├── TableConfigError             a table cannot be synced as configured (ValueError)
    │   └── ModelDefinitionError         a model file is malformed, or its dependencies cycle
    ├── StoreError                       analytics_shared.object_store
    │   └── ManifestConflict             etl_service.publisher: another writer published
    └── EtlError                         base of the errors below
        ├── SourceError                  the source could not be read (RuntimeError)
        │   └── SourceUnavailable        ... because of the connection or the server:
        │                                a new read transaction may work
        ├── RollbackError                a version cannot be made current (RuntimeError)
        ├── ModelBuildError              a model failed to build: the cycle publishes nothing
        ├── SchemaContractError          a source table's shape broke its `freeze` contract
        ├── StateStoreUnavailable        DATABASE_URL cannot be reached (also TransientError)
        ├── StateNotFound                a read-only command found no state database
        │                                (also ConfigurationError: it looked in the wrong place)
        ├── WorkerBusy                   another worker (or a direct command) holds the ETL
        ├── CommandFailed                a command handed to the worker failed
        └── RetryError                   the last attempt failed; `__cause__` is its error

A failure is classified once, where it is caught: `source_failure()` turns a
driver's exception into a SourceError or a SourceUnavailable. The only
failures judged by their text are DuckDB's errors relaying the extractor's
message while it pulls an Arrow stream (`is_connection_trouble`).

Messages name a failure as `<type>: <text>` (`describe`); a transient
subclass reports its family's name (a SourceUnavailable reads `SourceError:
...`), so classifying by type changed nothing operators read in runs, logs
and dead letters.
"""

from __future__ import annotations

import re
from typing import ClassVar

import sqlalchemy as sa

from analytics_shared.errors import AnalyticsError, ConfigurationError, TransientError
from analytics_shared.object_store import StoreUnavailable

__all__ = [
    "CommandFailed",
    "EtlError",
    "ModelBuildError",
    "ModelDefinitionError",
    "RetryError",
    "RollbackError",
    "SchemaContractError",
    "SourceError",
    "SourceUnavailable",
    "StateNotFound",
    "StateStoreUnavailable",
    "TableConfigError",
    "WorkerBusy",
    "describe",
    "is_connection_trouble",
    "remedy",
    "source_failure",
    "with_remedy",
]

# Error texts (from ConnectorX's Rust drivers and from DBAPI drivers) that
# mean "the connection or server had a problem; trying again may work".
_CONNECTION_TROUBLE = re.compile(
    r"connection|connect|timed? ?out|refused|reset by peer|broken pipe|terminat|"
    r"server closed|unexpected eof|shutting down|too many clients|could not receive|"
    r"deadlock|serialization|canceling statement due to conflict|recovery mode|"
    r"login failed|transport|pool|"
    # the exporting connection of the cycle's read transaction died: begin a new one
    r"invalid snapshot identifier",
    re.IGNORECASE,
)


class EtlError(AnalyticsError):
    """Base of the errors the ETL raises on purpose."""

    # The name messages show (see `describe`); None: the class's own name.
    reported_as: ClassVar[str | None] = None


class SourceError(EtlError, RuntimeError):
    """The source could not be read (connection, permissions, missing table)."""

    reported_as = "SourceError"


class SourceUnavailable(SourceError, TransientError):
    """The source's connection or server failed; trying again may work."""


class TableConfigError(EtlError, ConfigurationError, ValueError):
    """A table cannot be synced the way it is configured."""


class RollbackError(EtlError, RuntimeError):
    """The requested version cannot be made current (unknown, or fails verification)."""


class ModelDefinitionError(EtlError, ConfigurationError, ValueError):
    """A model file cannot be used: bad front matter, not one SELECT, a dependency cycle."""


class ModelBuildError(EtlError, RuntimeError):
    """DuckDB refused to build a model; the message names the model."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r} failed to build: {message}")
        self.model = model


class SchemaContractError(EtlError, RuntimeError):
    """A source table's columns changed and its contract (`freeze`) refuses the change.

    `change` is the `analytics_shared.manifest.SchemaChange` that was refused."""

    def __init__(self, message: str, change: object) -> None:
        super().__init__(message)
        self.change = change


class StateStoreUnavailable(EtlError, TransientError):
    """The state database (DATABASE_URL) cannot be reached."""


class StateNotFound(EtlError, ConfigurationError):
    """A read-only command found no state database where the settings point."""


class WorkerBusy(EtlError):
    """Another `analytics-etl run` (or a command run directly) holds the ETL."""


class WorkerLockLost(EtlError):
    """The state database dropped the worker lock (its connection died): another
    worker may hold it now, so this one stops; restarting it takes the lock again."""


class CommandFailed(EtlError):
    """A command handed to the running worker failed; the message is its error."""


class RetryError(EtlError):
    """The last attempt failed; `__cause__` is its error."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


def is_connection_trouble(text: str) -> bool:
    """True when a driver's message says the connection or the server had a problem."""
    return bool(_CONNECTION_TROUBLE.search(text))


def source_failure(what: str, exc: BaseException) -> SourceError:
    """Classify a driver's exception once: SourceUnavailable when retrying may help."""
    text = str(getattr(exc, "orig", None) or exc)
    transient = isinstance(
        exc, sa.exc.OperationalError | sa.exc.InterfaceError
    ) or is_connection_trouble(text)
    cls = SourceUnavailable if transient else SourceError
    return cls(f"{what}: {text.strip()}")


def describe(exc: BaseException) -> str:
    """`<type>: <message>`, as runs, logs and dead letters show a failure."""
    name = getattr(type(exc), "reported_as", None) or type(exc).__name__
    return f"{name}: {exc}"


def remedy(exc: BaseException) -> str | None:
    """What an operator should check for a failure, by its type (or its cause's):
    the settings that name the dependency. None when the message says enough."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SourceUnavailable):
            return (
                "check SOURCE_URL (or MSSQL_HOST, MSSQL_PORT) and that the source"
                " accepts connections from here"
            )
        if isinstance(seen, SourceError):
            return "check SOURCE_URL (or MSSQL_*), TABLES_TO_SYNC and the login's permissions"
        if isinstance(seen, StoreUnavailable):
            return "check STORAGE_URL, S3_ENDPOINT_URL, the network and the keys"
        if isinstance(seen, StateStoreUnavailable):
            return "check that the database is up and DATABASE_URL names it"
        seen = seen.__cause__
    return None


def with_remedy(message: str, exc: BaseException) -> str:
    """`message`, followed by what to check when the failure's type says it."""
    hint = remedy(exc)
    return f"{message}; {hint}" if hint else message
