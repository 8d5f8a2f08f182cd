"""Memory of the API in a memory cgroup, idle and under the mixed load.

    .venv/bin/python -m benchmarks.memory_fit                      # the full matrix, ~12 min
    .venv/bin/python -m benchmarks.memory_fit --config seed-guide  # one row
    .venv/bin/python -m benchmarks.memory_fit --rows 2000000 --duration 40 --clients 8

Publishes a random 2,000,000-row `inventory` (testsupport.memory_load), then
for each configuration starts `analytics-api serve` in a fresh memory cgroup
(512 MB or 1 GB, as a container would have), measures every process's RSS and
PSS idle, samples them and the cgroup's charge every 0.5 s under the mixed
load (testsupport.memory_load.SHAPES: point lookups, 10,000-row JSON pages,
aggregates, 500,000-row Arrow results, a full-table NDJSON export, 400,000-row
sorted CSV exports, distinct queries filling the cache; client 0 reads
slowly), and prints per configuration: the peak, OOM kills and limit hits the
kernel counted, every outcome (200, clean error codes, dropped connections),
requests/s, and whether the server still answers afterwards. Needs root and a
writable memory cgroup controller (the machine's, not a container's).

The stream caps are lifted for every configuration (STREAM_MAX_ROWS=3000000,
STREAM_MAX_BYTES=2GB), so that the full-table export is a complete answer and
any cut connection is a failure, not the cap doing its job.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from api_service.dev.issuer import DevIssuer
from testsupport.cgroup import memory_cgroup_unavailable
from testsupport.memory_load import MIB, CgroupServer, publish_random_inventory, run_mixed_load

AUDIENCE = "https://analytics-api.memory-bench"


@dataclass(frozen=True)
class Config:
    name: str
    limit_mb: int
    env: dict[str, str] = field(default_factory=dict)


CONFIGS = (
    # What docs/deployment-guide.md recommended before the budget (issue 13);
    # the budget now refuses it at start-up.
    Config("seed-guide", 512, {"WEB_CONCURRENCY": "2", "DUCKDB_MEMORY_LIMIT": "512MB"}),
    Config("512-default", 512, {}),  # the budget picks 1 worker
    Config("512-1w-preload", 512, {"GUNICORN_CMD_ARGS": "--preload"}),
    Config("1g-default", 1024, {}),  # 2 workers on 2 cores
    Config("1g-2w-preload", 1024, {"GUNICORN_CMD_ARGS": "--preload"}),
    Config("1g-1w", 1024, {"WEB_CONCURRENCY": "1"}),
)


def _mb(n: int) -> str:
    return f"{n / MIB:.0f}"


def _sampler(server: CgroupServer, stop: threading.Event, peaks: dict[str, int]) -> None:
    while not stop.is_set():
        for name, (rss, _pss, anon) in server.rss().items():
            peaks[name] = max(peaks.get(name, 0), rss)
            peaks[name + " anon"] = max(peaks.get(name + " anon", 0), anon)
        peaks["cgroup"] = max(peaks.get("cgroup", 0), server.current_bytes())
        stop.wait(0.5)


def run_config(
    config: Config, work: Path, auth: dict[str, str], token: str, args: argparse.Namespace
) -> dict[str, object]:
    env = {
        **auth,
        "STORAGE_URL": (work / "store").resolve().as_uri(),
        "DATA_DIR": str(work / f"data-{config.name}"),
        "RATE_LIMIT_REQUESTS": "1000000000",
        "LOG_LEVEL": "WARNING",
        "STREAM_MAX_ROWS": "3000000",
        "STREAM_MAX_BYTES": "2GB",
        **config.env,
    }
    env["STREAM_MAX_BYTES"] = str(2 * 10**9)
    log = work / f"{config.name}.log"
    with CgroupServer(env, config.limit_mb * MIB, log) as server:
        try:
            server.wait_ready(timeout=180)
        except RuntimeError:
            refusal = log.read_text(errors="replace").strip().splitlines()[-1:]
            print(json.dumps({"config": config.name, "refused": refusal}), flush=True)
            return {"config": config.name, "limit_mb": config.limit_mb, "refused": refusal}
        time.sleep(2)
        idle = server.rss()
        idle_cgroup = server.current_bytes()
        peaks: dict[str, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sampler, args=(server, stop, peaks), daemon=True)
        sampler.start()
        report = run_mixed_load(
            server.url, token, rows=args.rows, duration=args.duration, clients=args.clients
        )
        stop.set()
        sampler.join()
        after = server.rss()
        try:
            alive = httpx.get(server.url + "/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            alive = False
        usage = server.usage()
        memory = _health_memory(server.url)
    row: dict[str, object] = {
        "config": config.name,
        "limit_mb": config.limit_mb,
        "env": config.env,
        "idle_rss_mb": {k: _mb(v[0]) for k, v in idle.items()},
        "idle_pss_mb": {k: _mb(v[1]) for k, v in idle.items()},
        "idle_anon_mb": {k: _mb(v[2]) for k, v in idle.items()},
        "idle_cgroup_mb": _mb(idle_cgroup),
        "peak_rss_mb": {k: _mb(v) for k, v in peaks.items()},
        "after_rss_mb": {k: _mb(v[0]) for k, v in after.items()},
        "after_anon_mb": {k: _mb(v[2]) for k, v in after.items()},
        "cgroup_peak_mb": _mb(usage.peak_bytes),
        "oom_kills": usage.oom_kills,
        "limit_hits": usage.limit_hits,
        "requests": report.requests,
        "rps": round(report.requests / report.seconds, 1),
        "outcomes": dict(report.outcomes),
        "dropped": report.dropped,
        "alive_after": alive,
        "budget_mb": memory,
    }
    print(json.dumps(row), flush=True)
    return row


def _health_memory(url: str) -> dict[str, object]:
    """The worker's budget from /health, in MiB."""
    try:
        memory = httpx.get(url + "/health", timeout=10).json().get("memory") or {}
    except (httpx.HTTPError, ValueError):
        return {}
    keys = ("workers", "duckdb", "heavy", "cache", "max_result_bytes", "busy_refusals_total")
    return {k: (round(v / MIB) if k in keys[1:5] else v) for k, v in memory.items() if k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--config", action="append", help="run only these (repeatable)")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    reason = memory_cgroup_unavailable()
    if reason:
        raise SystemExit(f"memory_fit needs a memory cgroup: {reason}")
    configs = [c for c in CONFIGS if not args.config or c.name in args.config]
    rows = []
    with tempfile.TemporaryDirectory(prefix="memory-fit-") as tmp, DevIssuer(AUDIENCE) as issuer:
        work = Path(tmp)
        started = time.monotonic()
        publish_random_inventory(work, args.rows)
        print(f"published {args.rows:,} random rows in {time.monotonic() - started:.1f} s")
        print(f"load average {os.getloadavg()[0]:.2f}")
        token = issuer.mint(sub="memory-bench", ttl=7200)
        for config in configs:
            rows.append(run_config(config, work, issuer.settings_env(), token, args))
        print(f"load average {os.getloadavg()[0]:.2f}")
    print()
    print("| config | limit | idle RSS (master / workers) | peak RSS | cgroup peak | OOM kills |"
          " dropped | requests/s | outcomes | alive after |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "refused" in r:
            print(f"| {r['config']} | {r['limit_mb']} MB | refused at start: {r['refused']} |")
            continue
        idle = r["idle_rss_mb"]
        peak = r["peak_rss_mb"]
        assert isinstance(idle, dict) and isinstance(peak, dict)
        print(
            f"| {r['config']} | {r['limit_mb']} MB | {' / '.join(idle.values())} MB"
            f" | {' / '.join(v for k, v in peak.items() if k != 'cgroup' and 'anon' not in k)} MB"
            f" | {r['cgroup_peak_mb']} MB | {r['oom_kills']} | {r['dropped']} | {r['rps']}"
            f" | {r['outcomes']} | {r['alive_after']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
