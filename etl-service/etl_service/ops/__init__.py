"""Operating the ETL: what runs beside the sync rather than in it.

versions.py       `analytics-etl versions` and the verified `rollback`
lake_versions.py  the same in lake mode: lake snapshots, rollback as a new snapshot
monitoring.py     after each scheduled cycle: metrics, lag, dead letters, alerts
health_server.py  `/health` (JSON) and `/metrics` (Prometheus) on ETL_METRICS_PORT
alerts.py         webhook alerts (Slack, PagerDuty, Opsgenie), one per incident
memory_budget.py  the container's memory split once: DuckDB's memory_limit and threads
"""
