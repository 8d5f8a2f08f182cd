"""etl-service: syncs changed source rows into DuckDB and publishes snapshots."""

__version__ = "0.1.0"
