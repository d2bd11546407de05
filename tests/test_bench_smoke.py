"""The benchmark harness at a tiny size, so it cannot rot silently.

Every bench function runs once at the suite's "tiny" size against the test database
(real PostgreSQL, real sockets on loopback, the real clock) and must produce each of
its keys as a positive number. Nothing here judges speed: no timing thresholds. The
one key that may be 0 is ``max_ticks_per_s``, the highest rate the pipeline
*sustained* (its own latency criteria, see bench/pipeline.py): on a loaded machine no
rate may meet them, and then 0 is the right answer; there the steps it measured are
checked instead.
"""

import json

from bench.__main__ import main as bench_main
from bench.suite import BENCHES, KEYS, run_bench


async def test_every_bench_produces_its_keys_as_positive_numbers(database_url):
    results = {}
    for bench in BENCHES:
        result = await run_bench(bench, "tiny", database_url)
        for key in bench.keys:
            results[key] = result.get(key)
        assert isinstance(result.get("details"), dict), bench.name
        if bench.name == "pipeline":
            floor = result["details"]["durable_commit_floor_ms"]
            assert floor["commits"] == 20 and 0 < floor["p50_ms"] <= floor["p99_ms"], floor
            steps = result["details"]["steps"]
            assert steps and all(step["received"] > 0 and isinstance(step["sustained"], bool) for step in steps)
            sustained = [step["offered_per_s"] for step in steps if step["sustained"]]
            assert result["max_ticks_per_s"] == max(sustained, default=0), steps
        if bench.name == "stream_to_book":  # one round: each of the five changes on each exchange, in order
            details = result["details"]
            assert details["changes"] == 10 and details["opened_at_sources"] == ["stream"], details
            for exchange in details["exchanges"].values():
                assert all(kind["n"] == 1 for kind in exchange["by_change"].values()), exchange
    assert set(results) == set(KEYS)
    for key in KEYS:
        value = results[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert value >= 0 if key == "max_ticks_per_s" else value > 0, (key, value)


def test_command_line_writes_every_key_in_order(tmp_path):
    out = tmp_path / "results.json"
    assert bench_main(["--quick", "--only", "decision", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert list(written) == list(KEYS)
    assert written["decision_us"] > 0
    details = json.loads((tmp_path / "results_details.json").read_text())
    assert details["benches"]["decision"]["result"]["decision_us"] == written["decision_us"]
