"""Code both services share: errors, manifest, snapshot files, object store, settings,
logging, whitelist."""

from analytics_shared.errors import AnalyticsError, ConfigurationError, TransientError
from analytics_shared.logging_config import configure_logging, get_logger
from analytics_shared.manifest import MANIFEST_KEY, Manifest, ManifestError, TableInfo
from analytics_shared.object_store import (
    LocalObjectStore,
    NotModified,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    S3ObjectStore,
    StoreError,
    StoreUnavailable,
    open_store,
)
from analytics_shared.settings import CommonSettings, SettingsError, load_settings
from analytics_shared.whitelist import Whitelist, WhitelistError, load_whitelist

__all__ = [
    "MANIFEST_KEY",
    "AnalyticsError",
    "CommonSettings",
    "ConfigurationError",
    "LocalObjectStore",
    "Manifest",
    "ManifestError",
    "NotModified",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PreconditionFailed",
    "S3ObjectStore",
    "SettingsError",
    "StoreError",
    "StoreUnavailable",
    "TableInfo",
    "TransientError",
    "Whitelist",
    "WhitelistError",
    "configure_logging",
    "get_logger",
    "load_settings",
    "load_whitelist",
    "open_store",
]
