"""The web console at `/console`: static assets built from the repository's
`console/` folder (`make console`) into `static/`, served by the API itself
under a strict Content-Security-Policy, plus `config.json` (how to sign in).

What must always hold: nothing here is fetched at run time; no console
response allows inline scripts or a third-party origin other than the
authorization server the console signs in with.
"""

from api_service.console.mount import mount_console

__all__ = ["mount_console"]
