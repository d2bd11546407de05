"""``python -m bench.run_one NAME SIZE [JSON-OVERRIDES]``: one bench in a fresh process.

The database URL comes from ``BENCH_DB_URL``. Prints the result as one JSON line.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import trio

from bench.common import configure_logging
from bench.suite import BENCHES, run_bench


def main(argv: list[str]) -> int:
    name, size = argv[0], argv[1]
    overrides = json.loads(argv[2]) if len(argv) > 2 else {}
    bench = next(b for b in BENCHES if b.name == name)
    configure_logging()
    result = trio.run(functools.partial(run_bench, bench, size, os.environ.get("BENCH_DB_URL"), **overrides))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
