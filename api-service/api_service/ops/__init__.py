"""Operating the server: Prometheus metrics, malloc tuning, Gunicorn settings."""
