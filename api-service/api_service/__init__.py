"""api-service: a read-only analytics API over the latest published snapshot."""

__version__ = "0.1.0"
