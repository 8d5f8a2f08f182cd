"""The edge of both command-line tools: one line per error, two exit codes.

    0  done
    1  runtime failure: a dependency could not be reached, or the work failed
    2  configuration error: a setting or file is wrong (also usage errors)

What must always hold: an error a user can act on prints exactly one line on
stderr (`<prog>: <what>; <what to do>`) with no traceback and no secret (every
secret the settings hold is masked, `register_secret`); `--verbose` or
LOG_LEVEL=DEBUG adds the traceback above that line. A closed pipe
(`analytics-etl versions | head`) ends quietly.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from urllib.parse import urlsplit

from analytics_shared.errors import AnalyticsError, ConfigurationError

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "one_line",
    "redact",
    "register_secret",
    "register_url_secrets",
    "run_cli",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a value that must never be printed (masked by `redact`)."""
    if value and len(value) >= 3:
        _SECRETS.add(value)


def register_url_secrets(url: str | None) -> None:
    """Remember the password inside a URL (`scheme://user:password@host/...`)."""
    if not url:
        return
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    register_secret(password)


def redact(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def one_line(text: str) -> str:
    """A message as one line: its lines joined with '; ', secrets masked."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return redact("; ".join(parts))


def _verbose(argv_verbose: bool) -> bool:
    return argv_verbose or os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"


def _quiet_pipe() -> int:
    # stdout's reader went away (`| head`): stop writing, and keep the
    # interpreter from complaining while it flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


def run_cli(prog: str, body: Callable[[], int], *, verbose: bool = False) -> int:
    """Run a command's body; turn every failure into one stderr line and an exit code."""
    try:
        return body()
    except BrokenPipeError:
        return _quiet_pipe()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        # load_settings' SettingsError, argparse: already a message or a code.
        if isinstance(exc.code, str):
            if _verbose(verbose):
                traceback.print_exc()
            print(f"{prog}: {one_line(exc.code)}", file=sys.stderr)
            return EXIT_CONFIG if isinstance(exc, ConfigurationError) else EXIT_FAILURE
        raise
    except Exception as exc:
        if _verbose(verbose):
            traceback.print_exc()
        if isinstance(exc, AnalyticsError):
            message = str(exc)
        else:
            message = (
                f"unexpected error: {type(exc).__name__}: {exc}"
                " (run with --verbose for the traceback)"
            )
        print(f"{prog}: {one_line(message)}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, ConfigurationError) else EXIT_FAILURE
