"""Alembic migrations for the ETL state store (run by StateStore on start)."""
