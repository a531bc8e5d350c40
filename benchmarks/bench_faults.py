"""The fault matrix (faults × outcomes) and what faults cost, against a fault-free floor.

    python benchmarks/bench_faults.py [--cells 200] [--rate 0.04] [--seed 5] [--floor 30]

Runs ``--cells`` blocking cells of the local scheduler over the project's test sshd with every
fault kind of :mod:`clusterjupyter.faults` mixed in at ``--rate`` (per operation), checks each
cell (no lost result, no job run or started twice, the final state its faults call for, every
error one clear line) and prints the matrix: one row per fault kind a cell met, one column per
outcome. The floor is ``--floor`` cells on the same profile without faults, in the same run;
the timing table gives the median cell with and without faults and their ratio. The same matrix
is what tests/test_faults.py asserts (and writes to test-artifacts/fault-matrix.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--rate", type=float, default=0.04)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--floor", type=int, default=30)
    args = ap.parse_args()

    import testclusters

    ssh = testclusters.ensure("sshd")["ssh"]
    base = Path(tempfile.mkdtemp(prefix="cj-bench-faults-", dir="/var/tmp"))
    os.environ["CLUSTERJUPYTER_HOME"] = str(base / "cj")
    ran = base / "ran"
    ran.mkdir()
    from helpers import ssh_profile, write_profiles

    faults = {"rate": args.rate, "seed": args.seed, "hang": 0.2, "slow": 0.2}
    write_profiles(base / "cj", {
        "floor": ssh_profile(ssh, base / "work"),
        "flaky": ssh_profile(ssh, base / "work", faults=faults)})

    import faultmatrix
    from shells import new_shell

    sh = new_shell()
    sh.run_cell("%%cluster floor\nwarm = 1", silent=True)
    sh.run_cell("%%cluster flaky\nwarm = 1", silent=True)
    from clusterjupyter.backends import backend_for

    backend_for("flaky").transport.inner.backoff = 0.02
    # the cells' own output, and paramiko's complaints about the sockets cut under it, are not
    # part of the table
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        floor = [faultmatrix.run_cell(sh, "floor", i, ran) for i in range(args.floor)]
        cells = [faultmatrix.run_cell(sh, "flaky", 10_000 + i, ran) for i in range(args.cells)]

    print(f"fault matrix: {args.cells} cells, local scheduler over the loopback sshd, "
          f"rate {args.rate} per operation, seed {args.seed}\n")
    print(faultmatrix.table(cells))
    clean = [c.seconds for c in cells if not c.faults]
    faulty = [c.seconds for c in cells if c.faults]
    f0 = statistics.median(c.seconds for c in floor)
    print(f"\n{'cell (median)':<40} {'s':>7} {'ratio':>7}")
    print(f"{'floor: same profile, no fault plan':<40} {f0:7.3f} {1.0:7.2f}")
    if clean:
        m = statistics.median(clean)
        print(f"{'fault plan, cells that met none':<40} {m:7.3f} {m / f0:7.2f}")
    if faulty:
        m = statistics.median(faulty)
        print(f"{'fault plan, cells that met a fault':<40} {m:7.3f} {m / f0:7.2f}")
    bad = [c for c in floor + cells if c.problems]
    for c in bad:
        print(f"PROBLEM cell {c.index}: faults {c.faults}: {'; '.join(c.problems)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
