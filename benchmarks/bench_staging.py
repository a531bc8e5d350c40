"""File staging over the SSH transport, against floors measured in the same run (loopback sshd).

    python benchmarks/bench_staging.py [--mib 256] [--reps 3]

Uses the project's test sshd (``tests/testclusters.py``) and a real IPython shell. Rows, each
the median of ``--reps`` blocking ``%%cluster`` cells:

* a cell reading an N MiB file the first time (hashed, sent, laid out in the job's directory),
  against the same cell on the local profile (the file read in place) plus OpenSSH ``scp`` of
  the file;
* the same cell again, the file unchanged (its blob is already there: nothing is sent),
  against a cell without files over SSH plus what reading the file adds on the local profile;
* a cell writing an N MiB file that comes back (verified, written into the kernel's
  directory), against the same cell on the local profile plus ``scp`` of the file back.

Targets: first staging ≤ 1.5 × floor; unchanged ≤ 1.5 × floor; coming back ≤ 1.5 × floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def timed(fn: Callable[[], object], reps: int,
          before: Callable[[], object] = lambda: None) -> float:
    times = []
    for _ in range(reps):
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="size of the staged file (MiB)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import testclusters
    from helpers import write_profiles
    from shells import new_shell, ok

    ssh = testclusters.ensure("sshd")["ssh"]
    base = Path(tempfile.mkdtemp(prefix="cj-bench-staging-"))
    os.environ["CLUSTERJUPYTER_HOME"] = str(base / "cj")
    remote = base / "remote"
    write_profiles(base / "cj", {"far": {
        "scheduler": "local", "host": ssh["host"], "port": ssh["port"], "user": ssh["user"],
        "identity_file": ssh["identity_file"], "known_hosts": ssh["known_hosts"],
        "python": sys.executable, "workdir": str(remote), "stage_limit": "8G",
        "return_limit": "8G"}})
    nb = base / "notebook"
    nb.mkdir()
    os.chdir(nb)
    size = args.mib << 20
    data = nb / "data.bin"
    sh = new_shell()
    target = f"{ssh['user']}@{ssh['host']}"
    scp_opts = ["-q", "-P", str(ssh["port"]), "-i", ssh["identity_file"],
                "-o", f"UserKnownHostsFile={ssh['known_hosts']}", "-o", "BatchMode=yes"]

    def fresh_data() -> None:           # new content: a new address, sent again
        with open(data, "wb") as f:
            f.write(os.urandom(1 << 20) * args.mib)

    def cell(code: str) -> Callable[[], object]:
        return lambda: ok(sh, code)

    fresh_data()
    ok(sh, "%%cluster far\nwarm = 1")     # connection, secret, runner shipped
    ok(sh, "%%cluster local\nwarm = 1")
    read = "%%cluster {}\nn = len(open('data.bin', 'rb').read())"
    local_read = timed(cell(read.format("local")), args.reps)
    local_floor = timed(cell("%%cluster local\nx = 1"), args.reps)
    ssh_floor = timed(cell("%%cluster far\nx = 1"), args.reps)
    first = timed(cell(read.format("far")), args.reps, before=fresh_data)
    again = timed(cell(read.format("far")), args.reps)
    scp_to = timed(lambda: subprocess.run(
        ["scp", *scp_opts, str(data), f"{target}:{base / 'scp-copy.bin'}"], check=True),
        args.reps)
    write = ("%%cluster {}\nimport os\n"
             f"open('out.bin', 'wb').write(os.urandom(1 << 20) * {args.mib})")

    def remove() -> None:
        (nb / "out.bin").unlink(missing_ok=True)

    local_write = timed(cell(write.format("local")), args.reps, before=remove)
    back = timed(cell(write.format("far")), args.reps, before=remove)
    assert (nb / "out.bin").stat().st_size == size
    scp_back = timed(lambda: subprocess.run(
        ["scp", *scp_opts, f"{target}:{nb / 'out.bin'}", str(base / "scp-back.bin")],
        check=True), args.reps)

    rows = [
        (f"cell reading {args.mib} MiB, first time", first, local_read + scp_to,
         "local + scp", "≤ 1.5"),
        ("same cell, file unchanged", again, ssh_floor + max(local_read - local_floor, 0),
         "ssh, no file + read", "≤ 1.5"),
        (f"cell writing {args.mib} MiB that comes back", back, local_write + scp_back,
         "local + scp back", "≤ 1.5"),
    ]
    print(f"staging {args.mib} MiB over the loopback sshd, median of {args.reps}; "
          f"scp there {scp_to:.2f} s, back {scp_back:.2f} s")
    print(f"{'over ssh (staged)':<42} {'seconds':>8} {'floor':>8} {'floor is':<20} "
          f"{'ratio':>6}  target")
    for name, t, fl, what, target_text in rows:
        print(f"{name:<42} {t:8.2f} {fl:8.2f} {what:<20} {t / fl:6.2f}  {target_text}")


if __name__ == "__main__":
    main()
