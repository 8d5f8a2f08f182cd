"""Moved to `api_service.dev.issuer`; this name stays for benchmarks/freshness.py only."""

from api_service.dev.issuer import DevIssuer, SigningKey

__all__ = ["DevIssuer", "SigningKey"]
