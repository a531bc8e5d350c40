"""Cost of the environment guard per cell, against packing the same inputs (the floor).

    python benchmarks/bench_env.py [--runs 50] [--sync] [--slurm PARTITION]

The guard reads the global references of the cell's pickles, the cell's imports, the kernel's
versions of the packages found, and compares them with the interpreter's versions — learned
once by a probe (its cold cost is a row of its own) and then cached. Target: ≤ 5 ms per cell
with a warm cache. The job's interpreter here is this interpreter reached through a symlink
(another path, so the guard runs; versions match).

``--sync`` adds the cold sync of a small environment (numpy, dill, tblib: venv + pip on this
machine, local transport) and a trivial job's round trip with the synced environment against
the same job with the unsynced interpreter, in the same run (target: ≤ 0.1 s more).
``--slurm PARTITION`` (with ``--sync``) adds the same cold sync built as a SLURM job
(``env_build = "job"``) on that partition.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types


def median_time(fn, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--sync", action="store_true", help="also time a cold sync and jobs in it")
    ap.add_argument("--slurm", metavar="PARTITION", help="also time a cold sync as a SLURM job")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="cj-bench-env-")
    os.environ["CLUSTERJUPYTER_HOME"] = home
    python = os.path.join(home, "python")
    os.symlink(sys.executable, python)

    import numpy as np
    import pandas as pd

    from clusterjupyter import envprobe
    from clusterjupyter.backends import Backend, Submission
    from clusterjupyter.capture import Captured
    from clusterjupyter.payload import pack_inputs
    from clusterjupyter.profiles import Profile
    from clusterjupyter.resources import Resources

    backend = Backend(Profile(name="bench", python=python,
                              workdir=os.path.join(home, "work")))
    main_mod = types.ModuleType("__main__")
    ns = main_mod.__dict__
    cases = {
        "array + frame + scalars": {"a": np.arange(100_000.0), "alpha": 0.5,
                                    "df": pd.DataFrame({"x": range(1000), "y": ["s"] * 1000})},
        "list of 1e6 floats (8 MB pickle)": {"xs": [float(i) for i in range(1_000_000)]},
    }
    source = "import numpy as np\nimport pandas as pd\nfrom scipy import stats\nr = f(a)\nr"
    rows = []
    t0 = time.perf_counter()
    envprobe.interpreter_info(backend.transport, backend.profile)
    rows.append(("probe, cold (once per interpreter)", time.perf_counter() - t0, None, None))
    envprobe.forget()
    t0 = time.perf_counter()
    envprobe.interpreter_info(backend.transport, backend.profile)
    rows.append(("new process: cache file + stat", time.perf_counter() - t0, None, None))
    for label, values in cases.items():
        ns.update(values)
        captured = Captured(values=dict(values), modules={"np": "numpy", "pd": "pandas"})

        def pack(captured=captured) -> object:
            return pack_inputs(captured, ns, main_mod)

        packed = pack()
        sub = Submission(source=source, has_result=True, packed=packed, name="b",
                         resources=Resources())
        pack_med, _ = median_time(pack, max(5, args.runs // 5))
        guard_med, guard_min = median_time(lambda sub=sub: backend.check_environment(sub),
                                           args.runs)
        rows.append((f"guard: {label}", guard_med, guard_min, pack_med))
    print(f"{'measurement':<46} {'median ms':>10} {'min ms':>8} {'÷ packing':>10}")
    for name, med, low, floor in rows:
        print(f"{name:<46} {med * 1e3:10.2f} {'' if low is None else f'{low * 1e3:8.2f}':>8} "
              f"{'' if floor is None else f'{med / floor:10.3f}':>10}")
    print("target: guard ≤ 5 ms per cell (warm cache); floor: packing the same inputs")
    if args.sync:
        sync_rows(home, python, max(5, args.runs // 5), args.slurm)


def sync_rows(home: str, python: str, runs: int, partition: str | None) -> None:
    import tomli_w
    from IPython.core.interactiveshell import InteractiveShell

    from clusterjupyter import envsync
    from clusterjupyter.backends import backend_for

    config = os.path.join(home, "config")
    os.makedirs(config, exist_ok=True)
    work = os.path.join(home, "work2")
    with open(os.path.join(config, "profiles.toml"), "wb") as f:
        f.write(tomli_w.dumps({"profiles": {
            "plain": {"python": python, "workdir": work},
            "synced": {"python": python, "workdir": work},
            "asjob": {"python": python, "workdir": os.path.join(home, "work3"),
                      "scheduler": "slurm", "env_build": "job",
                      "resources": {"partition": partition or "", "time": "20m"}}}}).encode())
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "clusterjupyter")
    shell.run_cell("x = 20")
    t0 = time.perf_counter()
    envsync.command(backend_for("synced"), "sync", ["numpy"], say=lambda line: None)
    cold = time.perf_counter() - t0

    def cell(profile: str) -> None:
        r = shell.run_cell(f"%%cluster {profile}\ny = x + 1\ny", silent=True)
        assert r.success and shell.user_ns["y"] == 21

    t0 = time.perf_counter()
    envsync.command(backend_for("synced"), "sync", ["numpy"], say=lambda line: None)
    again = time.perf_counter() - t0
    for p in ("plain", "synced"):
        cell(p)      # warm up (probe, runner shipped)
    times: dict[str, list[float]] = {"plain": [], "synced": []}
    for _ in range(runs):      # interleaved: a change of the machine's load hits both alike
        for p in times:
            t0 = time.perf_counter()
            cell(p)
            times[p].append(time.perf_counter() - t0)
    plain, synced = (statistics.median(times[p]) for p in ("plain", "synced"))
    print(f"\n{'measurement':<46} {'seconds':>10}")
    print(f"{'cold sync: numpy, dill, tblib (venv + pip)':<46} {cold:10.2f}")
    print(f"{'sync again (environment already there)':<46} {again:10.3f}")
    print(f"{'trivial job, unsynced interpreter (median)':<46} {plain:10.3f}")
    print(f"{'trivial job, synced environment (median)':<46} {synced:10.3f}")
    print(f"{'overhead of the synced environment':<46} {synced - plain:10.3f}  (target ≤ 0.1)")
    if partition:
        t0 = time.perf_counter()
        envsync.command(backend_for("asjob"), "sync", ["numpy"], say=lambda line: None)
        print(f"{'cold sync as a SLURM job (env_build = job)':<46} "
              f"{time.perf_counter() - t0:10.2f}")
    print(f"({runs} jobs each, interleaved; the cold syncs' pip uses this machine's pip cache)")


if __name__ == "__main__":
    main()
