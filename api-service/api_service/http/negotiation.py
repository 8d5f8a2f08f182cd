"""Reading weighted HTTP header lists (`Accept`, `Accept-Encoding`)."""

from __future__ import annotations

__all__ = ["weighted_values"]


def weighted_values(header: str | None) -> list[tuple[str, float]]:
    """`"a;q=0.5, b"` -> `[("a", 0.5), ("b", 1.0)]`, in header order, lower-cased.

    A malformed q-value counts as 0 (not acceptable) rather than an error.
    """
    values: list[tuple[str, float]] = []
    for part in (header or "").split(","):
        name, *options = (p.strip() for p in part.split(";"))
        quality = 1.0
        for option in options:
            key, _, value = option.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if name:
            values.append((name.lower(), quality))
    return values
