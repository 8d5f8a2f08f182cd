"""Development and test aids, never used by the product: a local token issuer."""
