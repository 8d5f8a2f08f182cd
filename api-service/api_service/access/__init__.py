"""Row-level security and column-level access from token claims (rules.py, rewrite.py)."""
