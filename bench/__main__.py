"""``python -m bench [--quick] [--only NAME,...] [--profile]``: measure, write bench/results.json, print a table.

Each bench runs in a fresh interpreter (``python -m bench.run_one``), so one cannot
disturb the next (heap, GC, leftover tasks) and one failing does not stop the rest.
The database is ``DATABASE_URL`` if set, else the server at 127.0.0.1:5432 if it
answers, else an embedded server; on it a database of our own (``apm_bench_<random>``)
is created, migrated, and dropped at the end.

``bench/results.json`` holds exactly the keys of :data:`bench.suite.KEYS`, in order
(``null`` for a bench that failed); ``bench/results_details.json`` holds what each bench
saw (rates per step, CPU shares, breakdowns, errors). ``--profile`` adds one window of
the pipeline under a profiler at the highest sustained rate, written to
``bench/profile_pipeline.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BenchDatabase, PROJECT_ROOT, machine_cpu
from bench.suite import BENCHES, KEYS, UNITS, target

HERE = Path(__file__).resolve().parent


def _run(name: str, size: str, url: str | None, overrides: dict, timeout: float) -> tuple[dict | None, str | None]:
    env = dict(os.environ)
    if url:
        env["BENCH_DB_URL"] = url
    cmd = [sys.executable, "-m", "bench.run_one", name, size, json.dumps(overrides)]
    try:
        proc = subprocess.run(cmd, cwd=str(PROJECT_ROOT), env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return None, (proc.stderr or proc.stdout)[-4000:]
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"no result line: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"


def _code_version() -> dict:
    """Which code was measured: the commit, and the files changed on top of it (read-only git)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=str(PROJECT_ROOT), capture_output=True, text=True,
                                  timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_changes": changed}


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and v < 100:
        return f"{v:,.3f}".rstrip("0").rstrip(".")
    return f"{v:,.0f}"


def table(results: dict, ran: set[str] | None = None) -> str:
    """The results as a table; a key without a value is FAILED if it was in ``ran``, else "not run"."""
    rows = [("key", "value", "unit", "target", "")]
    for key in KEYS:
        text, met = target(key, results)
        verdict = "" if met is None else ("pass" if met else "MISS")
        if results.get(key) is None:
            verdict = "FAILED" if ran is None or key in ran else "not run"
        rows.append((key, _fmt(results.get(key)), UNITS[key], text, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].ljust(widths[2]),
                                r[3].ljust(widths[3]), r[4]]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a shorter run (about a minute) that fills every key")
    p.add_argument("--only", default=None, help="comma-separated bench names: " + ", ".join(b.name for b in BENCHES))
    p.add_argument("--profile", action="store_true", help="also profile one pipeline window (bench/profile_pipeline.txt)")
    p.add_argument("--out", default=str(HERE / "results.json"), help="results file (default bench/results.json)")
    args = p.parse_args(argv)
    size = "quick" if args.quick else "full"
    chosen = [b for b in BENCHES if args.only is None or b.name in args.only.split(",")]
    if not chosen:
        p.error("--only matches no bench")

    results: dict = {}
    details: dict = {"mode": size, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count(),
                     "code": _code_version(), "benches": {}}
    failed = []
    began = time.monotonic()
    needs_db = any(b.needs_db for b in chosen)
    db = BenchDatabase() if needs_db else None
    try:
        if db is not None:
            db.__enter__()
            details["database"] = db.where
            print(f"bench: database {db.name} on {db.where} ({size} run)", flush=True)
        for bench in chosen:
            overrides = {}
            if args.profile and bench.name == "pipeline":
                overrides = {"profile_rate": -1, "profile_out": str(HERE / "profile_pipeline.txt")}
            t0, load0, cpu0 = time.monotonic(), os.getloadavg()[0], machine_cpu()
            result, error = _run(bench.name, size, db.url if db else None, overrides,
                                 timeout=900 if size == "full" else 300)
            wall = time.monotonic() - t0
            busy = (machine_cpu()[0] - cpu0[0]) / wall
            info = {"seconds": round(wall, 1), "loadavg_1min_before": round(load0, 2),
                    "machine_busy_cores_during": round(busy, 2)}
            if result is None:
                failed.append(bench.name)
                info["error"] = error
                print(f"bench: {bench.name:<10} FAILED after {wall:.1f} s\n{error}", flush=True)
            else:
                for key in bench.keys:
                    results[key] = result.get(key)
                info["result"] = {k: result.get(k) for k in bench.keys}
                info["details"] = result.get("details")
                shown = ", ".join(f"{k}={_fmt(result.get(k))}" for k in bench.keys)
                print(f"bench: {bench.name:<10} {wall:5.1f} s  {shown}", flush=True)
            details["benches"][bench.name] = info
    finally:
        if db is not None:
            db.__exit__(None, None, None)
    details["total_seconds"] = round(time.monotonic() - began, 1)

    out = {key: results.get(key) for key in KEYS}
    if args.only is not None and Path(args.out).exists():  # a partial run updates the keys it measured
        try:
            previous = json.loads(Path(args.out).read_text())
            out = {key: (results[key] if key in results else previous.get(key)) for key in KEYS}
        except ValueError:
            pass
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out).with_name(Path(args.out).stem + "_details.json").write_text(
        json.dumps(details, indent=1, default=str) + "\n")
    print()
    print(table(out, ran={key for b in chosen for key in b.keys}))
    print(f"\n{size} run: {details['total_seconds']} s; wrote {args.out}")
    floor = ((details["benches"].get("pipeline") or {}).get("details") or {}).get("durable_commit_floor_ms")
    if floor:
        print(f"floor under tick_to_order: one durable write-ahead commit alone (idle, own connection) "
              f"p50 {_fmt(floor['p50_ms'])} / p99 {_fmt(floor['p99_ms'])} ms")
    misses = [k for k in KEYS if target(k, out)[1] is False and out.get(k) is not None]
    if misses:
        print("targets missed: " + ", ".join(misses))
    if failed:
        print("benches failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
