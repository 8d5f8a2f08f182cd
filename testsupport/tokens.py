"""Helpers for token-validation tests."""

from __future__ import annotations

from typing import Any

from api_service.auth.tokens import TokenValidator

__all__ = ["count_signature_checks"]


def count_signature_checks(validator: TokenValidator) -> list[int]:
    """Counts the validator's full validations (signature checks) in `[0]`."""
    calls = [0]
    decode = validator._decode

    def counting(*args: Any) -> dict[str, Any]:
        calls[0] += 1
        return decode(*args)

    validator._decode = counting  # type: ignore[method-assign]
    return calls
