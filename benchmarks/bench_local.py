"""Round trip of a trivial %%cluster cell on the local backend, against a floor from the same run.

    python benchmarks/bench_local.py [--runs 30]

The floor is starting the same interpreter to import dill (`python -c "import dill"`): the least
any out-of-process runner that unpickles with dill could cost. Target: median round trip ≤ 0.15 s
on the 2-core development machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def median_time(fn, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    os.environ["CLUSTERJUPYTER_HOME"] = tempfile.mkdtemp(prefix="cj-bench-")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "clusterjupyter")
    shell.run_cell("x = 20")
    shell.run_cell("%%cluster\ny = x + 1\ny", silent=True)  # warm up (secret, work root)

    def trivial() -> None:
        r = shell.run_cell("%%cluster\ny = x + 1\ny", silent=True)
        assert r.success and shell.user_ns["y"] == 21

    def floor() -> None:
        subprocess.run([sys.executable, "-c", "import dill"], check=True)

    def bare() -> None:
        subprocess.run([sys.executable, "-c", "pass"], check=True)

    rows = [
        ("python -c 'import dill' (floor)", *median_time(floor, args.runs)),
        ("python -c 'pass'", *median_time(bare, args.runs)),
        ("%%cluster trivial cell, local", *median_time(trivial, args.runs)),
    ]
    floor_median = rows[0][1]
    print(f"{'measurement':<36} {'median s':>9} {'min s':>7} {'× floor':>8}")
    for name, med, low in rows:
        print(f"{name:<36} {med:9.3f} {low:7.3f} {med / floor_median:8.2f}")
    target = 0.15
    verdict = "meets" if rows[2][1] <= target else "MISSES"
    print(f"\ntarget: trivial cell median ≤ {target:.2f} s — {verdict} ({rows[2][1]:.3f} s, "
          f"{args.runs} runs, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
