"""The address `analytics-api serve` binds, checked before Gunicorn starts.

What must always hold: a port another process holds ends `serve` at once
with one line naming the setting and the address (exit 1), instead of
Gunicorn's five retries and a dozen log lines; an address that is not
`host:port` is a configuration error (exit 2). Gunicorn reads the same
address (`bind_address`), so the check and the server never disagree.
"""

from __future__ import annotations

import errno
import os
import socket

from analytics_shared.errors import AnalyticsError, ConfigurationError

__all__ = ["PortUnavailable", "bind_address", "check_bind"]


class PortUnavailable(AnalyticsError):
    """The address cannot be bound (in use, or not allowed): a runtime failure."""


def bind_address(explicit: str | None = None) -> str:
    """`--bind`, else API_BIND, else 0.0.0.0:$PORT (Railway and most platforms set PORT)."""
    return explicit or os.environ.get("API_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"


def _setting(explicit: str | None) -> str:
    if explicit:
        return "--bind"
    return "API_BIND" if os.environ.get("API_BIND") else "PORT"


def check_bind(explicit: str | None = None) -> str:
    """Bind the address once and let it go; raise naming the setting when that fails."""
    address, setting = bind_address(explicit), _setting(explicit)
    if address.startswith(("unix:", "fd://")):
        return address  # Gunicorn reports these itself
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - Gunicorn's own default for ":port"
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigurationError(
            f"{setting}: {address!r} is not host:port (for example 0.0.0.0:8000)"
        )
    port = int(port_text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"{setting}: cannot resolve the host of {address} ({exc})"
        ) from exc
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Gunicorn does
        sock.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "is already in use by another process"
        elif exc.errno == errno.EACCES:
            reason = "may not be bound by this user (ports below 1024 need privileges)"
        else:
            reason = f"cannot be bound ({exc.strerror})"
        raise PortUnavailable(
            f"{setting}: {address} {reason}; stop the other process or set {setting} to a free port"
        ) from exc
    finally:
        sock.close()
    return address
