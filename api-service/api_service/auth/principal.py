"""Who is calling (`Principal`) and which app policy of the whitelist applies.

What must always hold: a token's `app` (its client id) or an API key's bound
`policy` name selects exactly one policy, or the caller is refused with
`UnknownApplication` before anything else runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analytics_shared.whitelist import AppPolicy, Whitelist
from api_service.errors import UnknownApplication

__all__ = ["Principal", "policy_for"]


@dataclass(frozen=True)
class Principal:
    sub: str
    app: str | None
    scopes: frozenset[str] = field(default_factory=frozenset)
    claims: dict[str, Any] = field(default_factory=dict, repr=False)
    # Set for API keys: the policy the key is bound to (tokens use `app`).
    policy: str | None = None
    auth_method: str = "jwt"


def policy_for(principal: Principal, whitelist: Whitelist) -> AppPolicy:
    if principal.policy is not None:
        policy = whitelist.policies.get(principal.policy)
    else:
        policy = whitelist.policy_for(principal.app)
    if policy is None:
        raise UnknownApplication("this application is not registered for the API")
    return policy
