"""A sweep of N trivial elements on the real SLURM and the local backend, beside submitit.

    python benchmarks/bench_sweep.py [--n 1000] [--no-submitit] [--no-local] [--no-slurm]
    python benchmarks/bench_sweep.py --submit-only      # time to submit 1,000, then cancel

Uses the project's test SLURM (started by ``tests/testclusters.py``). Measured once each (a
1,000-element array keeps the test node busy for minutes), in this order:

* floor: ``sbatch --array=0-(N-1)`` of a script whose tasks only touch a file, timed until
  every file exists — SLURM's own dispatch of the array on this node;
* ``%%cluster slurm --async --sweep "i in range(N)"`` in a real InteractiveShell: time until
  the cell returns (everything sent and the array submitted; target ≤ 2 s), scheduler commands
  per monitor tick (target 1), time until every element's result is in the kernel
  (``sw.results()`` done), and the kernel memory the bound results hold (tracemalloc);
* submitit ``map_array`` of the same trivial function over the same N, on the same partition:
  time to submit, time until every ``job.result()`` is in;
* the local backend: the same sweep with ``xargs -P cores``.

Every SLURM job of the run is submitted with ``--nice`` (default 10000): the test cluster is
shared, and other users' jobs go first; what they take is part of the figures (all three SLURM
runs alike).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

CELL = "y = i * 2\n"


def wait_files(folder: Path, n: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while len(os.listdir(folder)) < n:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {n} files in {folder}")
        time.sleep(0.05)


def floor(partition: str, work: Path, n: int, nice: int) -> float:
    flags = work / "floor"
    flags.mkdir()
    script = work / "floor.sh"
    script.write_text(f"#!/bin/sh\n#SBATCH --partition={partition}\n#SBATCH --time=10\n"
                      f"#SBATCH --nice={nice}\n"
                      f"#SBATCH --mem=100M\n#SBATCH --output=/dev/null\n"
                      f"touch {flags}/$SLURM_ARRAY_TASK_ID\n")
    t0 = time.perf_counter()
    subprocess.run(["sbatch", "--parsable", f"--array=0-{n - 1}", str(script)], check=True,
                   capture_output=True)
    wait_files(flags, n, 3600)
    return time.perf_counter() - t0


def ours(shell, profile: str, n: int, submit_only: bool = False,
         nice: int = 0) -> dict[str, float]:
    from clusterjupyter.backends import backend_for

    backend = backend_for(profile)
    sched = backend.scheduler
    per_tick: list[int] = []
    status = sched.status

    def counted(native_ids, job_ids):  # one call per monitor tick; commands it issued
        before = sched.commands
        try:
            return status(native_ids, job_ids)
        finally:
            per_tick.append(sched.commands - before)

    sched.status = counted  # type: ignore[method-assign]
    t0 = time.perf_counter()
    extra = f" --directive=--nice={nice}" if nice else ""
    r = shell.run_cell(f'%%cluster {profile} --async --sweep "i in range({n})" --job sw{extra}\n'
                       + CELL, silent=True)
    submit = time.perf_counter() - t0
    assert r.success, r.error_in_exec
    sw = shell.user_ns["sw"]
    if submit_only:
        sw.cancel()
        sched.status = status  # type: ignore[method-assign]
        return {"submit": submit}
    counts = sw.wait(3600)
    import pandas  # noqa: F401  (imported before measuring what the results hold)

    tracemalloc.start()
    results = sw.results()
    total = time.perf_counter() - t0
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert counts.done == n and len(results["y"]) == n, (counts, len(results.get("y", ())))
    sched.status = status  # type: ignore[method-assign]
    return {"submit": submit, "total": total, "mem": held,
            "ticks": len(per_tick), "max_cmds": max(per_tick or [0]),
            "mean_cmds": sum(per_tick) / max(len(per_tick), 1)}


def submitit_run(partition: str, work: Path, n: int, nice: int) -> dict[str, float]:
    import submitit

    ex = submitit.AutoExecutor(folder=str(work / "submitit"), cluster="slurm")
    ex.update_parameters(slurm_partition=partition, timeout_min=10, mem_gb=0.1,
                         slurm_array_parallelism=n,
                         slurm_additional_parameters={"nice": nice} if nice else {})

    def double(i: int) -> int:
        return i * 2

    t0 = time.perf_counter()
    jobs = ex.map_array(double, range(n))
    submit = time.perf_counter() - t0
    values = [j.result() for j in jobs]
    total = time.perf_counter() - t0
    assert values == [i * 2 for i in range(n)]
    return {"submit": submit, "total": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--no-submitit", action="store_true")
    ap.add_argument("--no-local", action="store_true")
    ap.add_argument("--no-slurm", action="store_true")
    ap.add_argument("--nice", type=int, default=10000,
                    help="sbatch --nice of every SLURM job (others' jobs go first; default 10000)")
    ap.add_argument("--submit-only", action="store_true",
                    help="only the time to submit (then cancel): SLURM and local")
    args = ap.parse_args()
    n = args.n

    import testclusters

    partition = testclusters.ensure("slurm")["slurm"]["partition"]
    work = Path(tempfile.mkdtemp(prefix="cj-bench-sweep-"))
    os.environ["CLUSTERJUPYTER_HOME"] = str(work / "cj")
    (work / "cj" / "config").mkdir(parents=True)
    (work / "cj" / "config" / "profiles.toml").write_text(
        f'[profiles.slurm]\nscheduler = "slurm"\npython = "{sys.executable}"\n'
        f'workdir = "{work}/slurm"\nresources = {{partition = "{partition}", time = "10m", '
        f'mem = "100M"}}\n\n[profiles.local]\nscheduler = "local"\n'
        f'python = "{sys.executable}"\nworkdir = "{work}/local"\n')

    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "clusterjupyter")
    rows: list[tuple[str, str, str]] = []
    if args.submit_only:
        for profile in ("slurm", "local"):
            o = ours(shell, profile, n, submit_only=True,
                     nice=args.nice if profile == "slurm" else 0)
            rows.append((f"{profile}: %%cluster --sweep {n}, submit (target <= 2 s)",
                         f"{o['submit']:.2f}", ""))
    elif not args.no_slurm:
        f = floor(partition, work, n, args.nice)
        rows.append((f"sbatch --array of {n} touch tasks (floor)", f"{f:.2f}", "1.00"))
        o = ours(shell, "slurm", n, nice=args.nice)
        rows += [(f"%%cluster --sweep {n}: submit (target <= 2 s)", f"{o['submit']:.2f}", ""),
                 (f"%%cluster --sweep {n}: all results in the kernel", f"{o['total']:.2f}",
                  f"{o['total'] / f:.2f}"),
                 ("  scheduler commands per tick (target 1): max / mean",
                  f"{o['max_cmds']} / {o['mean_cmds']:.2f}", f"{o['ticks']} ticks"),
                 ("  kernel memory held by the bound results", f"{o['mem'] / 1e6:.2f} MB", "")]
        if not args.no_submitit:
            s = submitit_run(partition, work, n, args.nice)
            rows += [(f"submitit map_array {n}: submit", f"{s['submit']:.2f}", ""),
                     (f"submitit map_array {n}: all results", f"{s['total']:.2f}",
                      f"{s['total'] / f:.2f}")]
    if not args.no_local and not args.submit_only:
        loc = ours(shell, "local", n)
        rows += [(f"local --sweep {n} (xargs -P {os.cpu_count()}): submit",
                  f"{loc['submit']:.2f}", ""),
                 (f"local --sweep {n}: all results in the kernel", f"{loc['total']:.2f}", ""),
                 ("  local: ps queries per tick: max / mean",
                  f"{loc['max_cmds']} / {loc['mean_cmds']:.2f}", f"{loc['ticks']} ticks")]
    print(f"{'measurement':<58} {'seconds':>12} {'x floor':>10}")
    for name, value, ratio in rows:
        print(f"{name:<58} {value:>12} {ratio:>10}")
    print(f"\n{n} elements, {os.cpu_count()} cores, one run each")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
