"""Who is calling and what they may do: bearer tokens (JWKS), API keys, the
per-user rate limit. Every protected route passes through here first (deps.py)."""
