"""Helpers that start real services for the tests (SeaweedFS, Gunicorn, ...)."""
