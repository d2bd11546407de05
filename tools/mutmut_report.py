"""Print the results of the last ``mutmut run`` (the mutants/ folder) per module.

Usage: ``python tools/mutmut_report.py [--survivors] [--by-function]``. Counts per
mutated file and in total: killed / survived / timeout / suspicious (and any other status
mutmut gave); ``--survivors`` also lists each surviving mutant's name (``mutmut show NAME``
shows it); ``--by-function`` counts the survivors of each function instead, largest first,
which shows the untested branches at a glance. Survivors judged equivalent are listed, with
the reason, in tests/MUTANTS.md.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

MAIN = ("killed", "survived", "timeout", "suspicious")


def main(argv: list[str]) -> int:
    metas = sorted(Path("mutants").rglob("*.py.meta"))
    if not metas:
        print("no mutation results: run `make mutate` first")
        return 1
    total: Counter[str] = Counter()
    survivors: list[str] = []
    print(f"{'module':28} {'mutants':>7} " + " ".join(f"{k:>10}" for k in MAIN) + "  other")
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(status_by_exit_code[c] for c in codes.values())
        total.update(counts)
        survivors += sorted(k for k, c in codes.items() if status_by_exit_code[c] == "survived")
        other = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in MAIN)
        name = str(meta.relative_to("mutants"))[: -len(".meta")]
        print(f"{name:28} {len(codes):7} " + " ".join(f"{counts[k]:10}" for k in MAIN) + f"  {other}")
    other = ", ".join(f"{k} {v}" for k, v in sorted(total.items()) if k not in MAIN)
    print(f"{'total':28} {sum(total.values()):7} " + " ".join(f"{total[k]:10}" for k in MAIN) + f"  {other}")
    if "--survivors" in argv:
        print("\nsurvivors:")
        for name in survivors:
            print("   ", name)
    if "--by-function" in argv:
        print("\nsurvivors by function:")
        for function, count in Counter(name.rsplit("__mutmut_", 1)[0] for name in survivors).most_common():
            print(f"    {count:5}  {function}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
