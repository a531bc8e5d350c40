"""The fault matrix: many cells on a profile with fault injection, each outcome checked.

Shared by tests/test_faults.py (which asserts) and benchmarks/bench_faults.py (which prints).
A cell appends its pid to a file of its own on the host, so a job that ran twice is seen.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterjupyter import api
from clusterjupyter.backends import backend_for
from clusterjupyter.errors import ClusterError
from clusterjupyter.jobdir import JobPaths
from shells import run

OUTCOMES = ("completed", "failed at submission", "lost", "other")
#: what a cell must end as, given the faults it met (first match wins)
RAW = (OSError, EOFError, ValueError, KeyError, AttributeError, TypeError, RuntimeError)


@dataclass
class Cell:
    index: int
    faults: list[str] = field(default_factory=list)   # "kind:operation"
    outcome: str = ""
    expected: str = ""
    error: str = ""
    runs: int = 0            # times the cell's code ran on the host
    starts: int = 0          # pids recorded for the job's start (spawn once per job)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return sorted({f.split(":")[0] for f in self.faults})


def expected_outcome(faults: list[str]) -> str:
    kinds = {f.split(":")[0] for f in faults}
    if "vanish" in kinds:
        return "lost"
    if any(f.startswith("hang:spawn") for f in faults):
        return "failed at submission"
    return "completed"


def run_cell(sh: Any, profile: str, i: int, ran_dir: Path) -> Cell:
    plan = getattr(backend_for(profile).transport, "plan", None)     # None: no faults
    log = plan.log if plan is not None else []
    before = len(log)
    before_jobs = {r.id for r in api.list_jobs(limit=100000)}
    t0 = time.perf_counter()
    src = (f"%%cluster {profile}\nimport os\n"
           f"with open({str(ran_dir / str(i))!r}, 'a') as ran_file:\n"
           f"    ran_file.write(str(os.getpid()) + '\\n')\n"
           f"del ran_file\nout{i} = {i} * 3\nout{i}")
    r = run(sh, src)
    cell = Cell(i, seconds=time.perf_counter() - t0)
    cell.faults = [f"{x.kind}:{x.operation}" for x in log[before:]]
    cell.expected = expected_outcome(cell.faults)
    ran = ran_dir / str(i)
    cell.runs = len(ran.read_text().split()) if ran.exists() else 0
    new = [rec for rec in api.list_jobs(limit=100000) if rec.id not in before_jobs]
    if len(new) != 1:
        cell.problems.append(f"{len(new)} journal records for one cell")
    err = r.error_in_exec or r.error_before_exec
    if err is None:
        cell.outcome = "completed"
        if r.result != i * 3 or sh.user_ns.get(f"out{i}") != i * 3:
            cell.problems.append(f"value {r.result!r}, expected {i * 3}")
    else:
        text = str(err)
        cell.error = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
        low = text.lower()
        if "submission" in low and "failed" in low:
            cell.outcome = "failed at submission"
        elif " lost" in low or "vanished" in low or "disappeared" in low:
            cell.outcome = "lost"
        else:
            cell.outcome = "other"
        if isinstance(err, RAW) and not isinstance(err, ClusterError):
            cell.problems.append(f"raw exception {cell.error}")
        first = text.splitlines()[0] if text.strip() else ""
        if not first.strip() or "Traceback" in text or len(first) > 500:
            cell.problems.append(f"unclear error {cell.error!r}")
        if type(err).__name__ == "UsageError" and len(text.splitlines()) != 1:
            cell.problems.append(f"error of {len(text.splitlines())} lines: {text[:300]!r}")
    if new:
        rec = api.get_job(new[-1].id)
        pidfile = Path(JobPaths.from_dir(rec.job_dir).scheduler_log + ".pid")
        cell.starts = len(pidfile.read_text().split()) if pidfile.exists() else 0
        final = rec.state.value
        if cell.outcome == "completed" and final != "completed":
            cell.problems.append(f"journal says {final} for a completed cell")
        if cell.outcome == "lost" and final != "lost":
            cell.problems.append(f"journal says {final} for a lost cell")
        if cell.outcome == "failed at submission" and (final != "failed" or rec.native_id):
            cell.problems.append(f"journal says {final} ({rec.native_id}) after a failed "
                                 "submission")
    if cell.runs > 1 or cell.starts > 1:
        cell.problems.append(f"ran {cell.runs} times, started {cell.starts} times")
    if cell.outcome != cell.expected:
        cell.problems.append(f"ended {cell.outcome} ({cell.error}), expected {cell.expected}")
    return cell


def matrix(cells: list[Cell]) -> dict[str, dict[str, int]]:
    """Rows: each fault kind a cell met (a cell counts in every row it met) and 'none'."""
    rows: dict[str, dict[str, int]] = {}
    for c in cells:
        for kind in c.kinds or ["none"]:
            row = rows.setdefault(kind, dict.fromkeys(OUTCOMES, 0))
            row[c.outcome] += 1
    order = ["none", "drop_before", "drop_during", "drop_after", "lost_answer", "hang",
             "truncate", "vanish", "slow"]
    return {k: rows[k] for k in order if k in rows}


def table(cells: list[Cell]) -> str:
    m = matrix(cells)
    wrong = sum(1 for c in cells if c.problems)
    lines = ["| fault met | cells | " + " | ".join(OUTCOMES) + " |",
             "|---|---:|" + "---:|" * len(OUTCOMES)]
    for kind, row in m.items():
        lines.append(f"| {kind} | {sum(row.values())} | "
                     + " | ".join(str(row[o]) for o in OUTCOMES) + " |")
    lines.append(f"\n{len(cells)} cells, {sum(len(c.faults) for c in cells)} faults injected; "
                 f"cells with a lost result, a duplicate run, a wrong state or an unclear "
                 f"error: {wrong}")
    return "\n".join(lines)


def write_artifacts(cells: list[Cell], directory: Path, name: str = "fault-matrix") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(
        {"matrix": matrix(cells), "cells": [asdict(c) for c in cells]}, indent=1))
    md = directory / f"{name}.md"
    md.write_text(table(cells) + "\n")
    return md
