"""Round trip of a trivial %%cluster cell on the local backend, against a floor from the same run.

    python benchmarks/bench_local.py [--runs 30]

The floor is starting the same interpreter to import dill (`python -c "import dill"`): the least
any out-of-process runner that unpickles with dill could cost. Target: median round trip ≤ 0.15 s
on the 2-core development machines.

The measurements are interleaved (one of each per round), so a change in the machine's load
during the run moves the floor and the cell alike; the ratio is the median of each round's own
ratio. The load average before and after is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable


def interleaved(fns: list[Callable[[], None]], runs: int) -> list[list[float]]:
    """Seconds of each function per round, the functions taking turns within a round."""
    rounds = []
    for _ in range(runs):
        row = []
        for fn in fns:
            t0 = time.perf_counter()
            fn()
            row.append(time.perf_counter() - t0)
        rounds.append(row)
    return rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    os.environ["CLUSTERJUPYTER_HOME"] = tempfile.mkdtemp(prefix="cj-bench-")
    load = os.getloadavg()
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

    names = ["python -c 'import dill' (floor)", "python -c 'pass'",
             "%%cluster trivial cell, local"]
    rounds = interleaved([floor, bare, trivial], args.runs)
    print(f"{'measurement':<36} {'median s':>9} {'min s':>7} {'× floor':>8}")
    for i, name in enumerate(names):
        times = [r[i] for r in rounds]
        ratio = statistics.median(r[i] / r[0] for r in rounds)
        print(f"{name:<36} {statistics.median(times):9.3f} {min(times):7.3f} {ratio:8.2f}")
    cell = statistics.median(r[2] for r in rounds)
    target = 0.15
    verdict = "meets" if cell <= target else "MISSES"
    print(f"\ntarget: trivial cell median ≤ {target:.2f} s — {verdict} ({cell:.3f} s, "
          f"{args.runs} runs, {os.cpu_count()} cores)")
    # the figures move with what else the machine runs: say how busy it was
    after = os.getloadavg()
    print(f"load average (1 min) before / after: {load[0]:.2f} / {after[0]:.2f}")


if __name__ == "__main__":
    main()
