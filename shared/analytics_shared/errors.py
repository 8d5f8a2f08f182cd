"""The root of every error the platform raises on purpose.

    AnalyticsError                  base: caught once at each service's edge
    ├── TransientError              retrying later may succeed (a dropped
    │                               connection, a store that timed out); retry
    │                               loops decide by this type, never by message
    ├── ConfigurationError          a setting or file is wrong; fix it, then start
    │                               again (WhitelistError)
    └── the shared data errors      ManifestError, SnapshotFileError, StoreError
                                    (StoreUnavailable is also a TransientError)

Each service builds its own hierarchy on these (api_service/errors.py,
etl_service/errors.py). Subclasses keep a builtin base where callers
historically caught one (ValueError for parse errors, KeyError for a missing
object), so `except ValueError` still works.
"""

from __future__ import annotations

__all__ = ["AnalyticsError", "ConfigurationError", "TransientError"]


class AnalyticsError(Exception):
    """Base of every error the platform raises on purpose."""


class TransientError(AnalyticsError):
    """The operation may succeed if tried again later."""


class ConfigurationError(AnalyticsError):
    """A setting, URL or configuration file is wrong; the message names it."""
