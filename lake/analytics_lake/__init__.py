"""The lake-mode processes: DuckDB 1.5.5 with DuckLake, in their own environment.

Run as `python -m analytics_lake <command>` by the services (through
analytics_shared.lake), one process per call, one DuckDB per process; the
request is JSON on standard input, the answer JSON on standard output.
Nothing here imports the services' packages (they run DuckDB 2.0.1).
"""
