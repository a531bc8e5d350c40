"""Real-notebook fidelity: public tutorial notebooks in the kernel and under ``%%cluster``.

    python benchmarks/bench_fidelity.py --materialise [--mirrors DIR]   # lay out the corpus once
    python benchmarks/bench_fidelity.py [ID ...] [--profile NAME | --ssh] [--data-over-ssh]
                                        [--report FILE] [--corpus DIR] [--list]

The notebooks are listed in ``benchmarks/fidelity/MANIFEST.toml`` (repository, commit, path,
licence, sha256 of every file) and laid out in ``benchmarks/fidelity/corpus/<id>/`` with their
data at the relative paths they read (see ``benchmarks/fidelity/README.md``).

Each notebook is executed with nbclient (a real ipykernel) in a fresh copy of its directory:

* twice as it is: a cell whose outputs differ between these two runs depends on unseeded
  randomness or the clock, and is left out of the comparison;
* once with ``%load_ext clusterjupyter`` first and every code cell prefixed by
  ``%%cluster [PROFILE]`` (an isolated ``CLUSTERJUPYTER_HOME``; the built-in ``local`` profile
  unless ``--profile``/``--ssh``).

Cells are compared in order on: stream text (per stream, consecutive chunks joined), the
result's text, the mime types (and text) of displays, error names, and the order of all of
these. Normalised first: memory addresses, ``%time``/``%timeit`` figures, the run's own
directories. The status line ``%%cluster`` displays is not an output of the cell.

Prints identical/compared per notebook and in total, every difference (cell, first line,
kernel vs cluster, a cause guessed from its form) and the summed time of the compared cells
under ``%%cluster`` divided by the same cells in the kernel.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fidelity_compare import (CellRun, Result, Run, compare, diff_lines, normalise,  # noqa: E402
                              pct, table, totals)

REPO = HERE.parent
FIDELITY = HERE / "fidelity"
MANIFEST = FIDELITY / "MANIFEST.toml"
DEFAULT_CORPUS = FIDELITY / "corpus"
CELL_TIMEOUT = 300


# -- the corpus ---------------------------------------------------------------------------------

@dataclass
class Entry:
    id: str
    repository: str
    commit: str
    licence: str
    reads_data: bool
    files: list[dict]

    @property
    def notebook(self) -> str:
        return self.files[0]["dest"]


def load_manifest(path: Path = MANIFEST) -> list[Entry]:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return [Entry(**nb) for nb in data["notebook"]]


def mirror_dir(mirrors: Path, repository: str) -> Path:
    owner, name = repository.rstrip("/").split("/")[-2:]
    for cand in (mirrors / f"{owner}+{name}" / "repo", mirrors / f"{owner}+{name}",
                 mirrors / name / ".git", mirrors / name):
        if (cand / "HEAD").exists():
            return cand
    raise SystemExit(f"no git directory for {repository} under {mirrors} (clone it there)")


def materialise(entries: list[Entry], mirrors: Path, corpus: Path) -> None:
    """Lay out each notebook and its files from a local git directory of its repository."""
    for e in entries:
        git_dir = mirror_dir(mirrors, e.repository)
        for f in e.files:
            spec = f"{e.commit}:{f['path']}"
            blob = subprocess.run(["git", f"--git-dir={git_dir}", "show", spec],
                                  capture_output=True, check=True).stdout
            digest = hashlib.sha256(blob).hexdigest()
            if digest != f["sha256"]:
                raise SystemExit(f"{e.id}: {f['path']} has sha256 {digest}, manifest {f['sha256']}")
            dest = corpus / e.id / f["dest"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(blob)
        print(f"{e.id}: {len(e.files)} files from {e.repository} @ {e.commit[:10]}")


def check_corpus(entries: list[Entry], corpus: Path) -> None:
    bad = []
    for e in entries:
        for f in e.files:
            p = corpus / e.id / f["dest"]
            if not p.exists() or hashlib.sha256(p.read_bytes()).hexdigest() != f["sha256"]:
                bad.append(f"{e.id}/{f['dest']}")
    if bad:
        raise SystemExit("corpus missing or changed: " + ", ".join(bad[:5])
                         + f"\nlay it out with: python {Path(__file__).name} --materialise "
                         "--mirrors DIR (git directories of the repositories in MANIFEST.toml)")


# -- running ------------------------------------------------------------------------------------

def prepare_workdir(entry: Entry, corpus: Path, root: Path) -> Path:
    cwd = root / entry.id
    shutil.copytree(corpus / entry.id, cwd, ignore=shutil.ignore_patterns("LICENCE"))
    return cwd


def run_notebook(entry: Entry, corpus: Path, root: Path, *, cluster: str | None,
                 env: dict[str, str]) -> Run:
    """Execute one notebook in a fresh copy of its directory; ``cluster`` is the ``%%cluster``
    argument line (``""`` for the default profile) or None to run it as it is."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    cwd = prepare_workdir(entry, corpus, root)
    nb = nbformat.read(cwd / entry.notebook, as_version=4)
    order = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    sources = {i: nb.cells[i].source for i in order}
    if cluster is not None:
        for i in order:
            nb.cells[i].source = f"%%cluster {cluster}".rstrip() + "\n" + sources[i]
    nb.cells.append(nbformat.v4.new_code_cell("%load_ext clusterjupyter"))  # run first
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    run = Run()
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with open(root / "kernel.log", "ab") as log, client.setup_kernel(stderr=log):
            if cluster is not None:
                setup = nb.cells[-1]
                client.execute_cell(setup, len(nb.cells) - 1)
                errs = [o for o in setup.outputs if o.output_type == "error"]
                if errs:
                    run.failure = f"%load_ext clusterjupyter: {errs[0].ename}: {errs[0].evalue}"
                    return run
            for i in order:
                t0 = time.perf_counter()
                try:
                    client.execute_cell(nb.cells[i], i)
                except CellTimeoutError:
                    nb.cells[i].outputs.append(nbformat.v4.new_output(
                        "error", ename="CellTimeout", evalue=f"> {CELL_TIMEOUT} s", traceback=[]))
                    run.failure = f"cell {i} timed out"
                except DeadKernelError as e:
                    run.failure = f"kernel died at cell {i}: {e}"
                    break
                seconds = time.perf_counter() - t0
                nb.cells[i].metadata["fidelity_seconds"] = round(seconds, 4)
                raw = [dict(o) for o in nb.cells[i].outputs]
                run.cells[i] = CellRun(i, sources[i], normalise(raw, cwd, root), raw, seconds)
                if run.failure:
                    break
    finally:
        nbformat.write(nb, cwd / "executed.ipynb")
        os.environ.clear()
        os.environ.update(saved)
    return run


def _cell_seconds(cell) -> float:
    if "fidelity_seconds" in cell.metadata:
        return float(cell.metadata["fidelity_seconds"])
    ex = cell.metadata.get("execution", {})
    try:
        t0 = dt.datetime.fromisoformat(ex["iopub.status.busy"].replace("Z", "+00:00"))
        t1 = dt.datetime.fromisoformat(ex["iopub.status.idle"].replace("Z", "+00:00"))
    except KeyError:
        return 0.0
    return (t1 - t0).total_seconds()


def load_run(entry: Entry, root: Path, sources: dict[int, str] | None = None) -> Run:
    """A run again from the executed notebook it left (``--keep``)."""
    import nbformat

    cwd = root / entry.id
    path = cwd / "executed.ipynb"
    run = Run()
    if not path.exists():
        run.failure = "not run"
        return run
    nb = nbformat.read(path, as_version=4)
    for i, c in enumerate(nb.cells[:-1]):  # the last one is the setup cell
        if c.cell_type != "code" or not c.source.strip() or "execution" not in c.metadata:
            continue
        raw = [dict(o) for o in c.outputs]
        src = sources[i] if sources and i in sources else c.source
        run.cells[i] = CellRun(i, src, normalise(raw, cwd, root), raw, _cell_seconds(c))
    return run


def recompare(entries: list[Entry], base: Path) -> dict[str, list[Result]]:
    """Compare the runs kept in ``base`` again (after a change to the comparison)."""
    tags = sorted(p.name.removeprefix("cluster-") for p in base.glob("cluster-*"))
    tags.sort(key=lambda t: t != "local")
    by_profile: dict[str, list[Result]] = {("" if t == "local" else t): [] for t in tags}
    for e in entries:
        plain = [load_run(e, base / f"plain{k}") for k in (1, 2)]
        srcs = {i: c.source for i, c in plain[0].cells.items()}
        for tag in tags:
            if (base / f"cluster-{tag}" / e.id / "executed.ipynb").exists():
                cl = load_run(e, base / f"cluster-{tag}", srcs)
                by_profile["" if tag == "local" else tag].append(
                    compare(e.id, plain[0], plain[1], cl))
    return by_profile


# -- the SSH profile -----------------------------------------------------------------------------

def ssh_profile_text(name: str, workdir: Path) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    import testclusters

    ssh = testclusters.ensure("ssh")["ssh"]
    return (f'[profiles.{name}]\nscheduler = "local"\nhost = "{ssh["host"]}"\n'
            f'port = {ssh["port"]}\nuser = "{ssh["user"]}"\n'
            f'identity_file = "{ssh["identity_file"]}"\nknown_hosts = "{ssh["known_hosts"]}"\n'
            f'python = "{sys.executable}"\nworkdir = "{workdir}"\n')


# -- report -------------------------------------------------------------------------------------

def git_head() -> str:
    """The commit under test: the newest commit of ``main`` in this checkout's history (the
    tested code), else HEAD."""
    def rev(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        try:
            return rev("rev-parse", "--short=10", rev("merge-base", "HEAD", "main"))
        except subprocess.CalledProcessError:
            return rev("rev-parse", "--short=10", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(path: Path, body: list[str], history_line: str, corpus: Path,
                 notes: Path | None = None) -> None:
    old = path.read_text().splitlines() if path.exists() else []
    history = [ln for ln in old if ln.startswith("history | ") and "time (UTC)" not in ln]
    history.append(history_line)
    head = [f"fidelity report — main commit {git_head()} — "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"one notebook again: CJ_FIDELITY_CORPUS={corpus} python benchmarks/bench_fidelity.py"
            " ID [--ssh] --keep (executed notebooks kept; ids: --list)", "",
            "history | time (UTC)       | commit     | identical/compared (local) | "
            "over ssh (data notebooks) | time ratio"]
    extra = notes.read_text().splitlines() + [""] if notes and notes.exists() else []
    path.write_text("\n".join(head + history + [""] + extra + body) + "\n")


# -- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ids", nargs="*", help="notebook ids (default: all; see --list)")
    ap.add_argument("--list", action="store_true", help="list the notebooks and exit")
    ap.add_argument("--corpus", type=Path, default=Path(os.environ.get(
        "CJ_FIDELITY_CORPUS", DEFAULT_CORPUS)), help="where the notebooks are laid out")
    ap.add_argument("--materialise", action="store_true",
                    help="lay out the corpus from git directories of the repositories")
    ap.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"),
                    help="directory holding OWNER+NAME/repo (or NAME/.git) git directories")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--profile", default=None, help="run %%%%cluster on this profile "
                       "(from the profiles.toml of CLUSTERJUPYTER_HOME, copied into the "
                       "isolated home)")
    where.add_argument("--ssh", action="store_true",
                       help="run on a profile against the project's loopback test sshd")
    ap.add_argument("--data-over-ssh", action="store_true",
                    help="also run the notebooks that read data files over the test sshd")
    ap.add_argument("--keep", action="store_true",
                    help="keep the runs' directories (executed.ipynb in each) and print where")
    ap.add_argument("--recompare", type=Path, metavar="DIR",
                    help="compare again the runs kept (--keep) in DIR, without running")
    ap.add_argument("--report", type=Path, help="write the table and every difference here "
                    "(a history of totals is kept at its top)")
    ap.add_argument("--notes", type=Path, help="a text put into the report after the history "
                    "(an analysis of the causes written by hand)")
    args = ap.parse_args(argv)
    known = [e.id for e in load_manifest()]
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        ap.error(f"unknown notebook(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    return args


def make_profiles(args: argparse.Namespace, entries: list[Entry], base: Path,
                  home: Path) -> list[tuple[str, list[str]]]:
    """Write the isolated home's profiles.toml; (``%%cluster`` argument, notebook ids) pairs."""
    config = home / "config" / "profiles.toml"
    config.parent.mkdir(parents=True)
    ids = [e.id for e in entries]
    if args.profile:
        from clusterjupyter.paths import profiles_path

        if Path(profiles_path()).exists():
            shutil.copy(profiles_path(), config)
        return [(args.profile, ids)]
    if args.ssh:
        config.write_text(ssh_profile_text("fidssh", base / "remote"))
        return [("fidssh", ids)]
    if args.data_over_ssh:
        config.write_text(ssh_profile_text("fidssh", base / "remote"))
        return [("", ids), ("fidssh", [e.id for e in entries if e.reads_data])]
    return [("", ids)]


def run_all(entries: list[Entry], corpus: Path, base: Path, profiles: list[tuple[str, list[str]]],
            env: dict[str, str]) -> dict[str, list[Result]]:
    by_profile: dict[str, list[Result]] = {p: [] for p, _ in profiles}
    for e in entries:
        plain = [run_notebook(e, corpus, base / f"plain{k}", cluster=None, env=env)
                 for k in (1, 2)]
        for prof, ids in profiles:
            if e.id not in ids:
                continue
            t0 = time.perf_counter()
            tag = prof or "local"
            cl = run_notebook(e, corpus, base / f"cluster-{tag}", cluster=prof, env=env)
            r = compare(e.id, plain[0], plain[1], cl)
            by_profile[prof].append(r)
            print(f"{e.id:28} [{tag}] {r.identical}/{r.compared} identical, {r.excluded} "
                  f"excluded, {time.perf_counter() - t0:.0f} s"
                  + (f" ({r.failure})" if r.failure else ""), flush=True)
    return by_profile


LEGEND = [
    "cells: code cells run; excl: cells whose outputs differ between two plain runs (unseeded "
    "randomness, time); ratio: summed cell time under %%cluster / plain",
    "causes: working directory (files not found: the job's directory, staging); magic (a magic "
    "in the cell); kernel setting (figure size/format, display options); figure/order (figures, "
    "output order); error form; identity/value (a value differs: aliasing, views, in-place "
    "changes); magic refused (refused before submission, by design); cannot travel (expected); "
    "cascade (a name bound by an earlier differing cell never arrived); other",
    "not outputs of a cell: the %%cluster status line, the notice that files the job wrote "
    "came back (a notice of files refused or left behind is kept)",
]


def report_body(by_profile: dict[str, list[Result]]) -> list[str]:
    body: list[str] = []
    for prof, results in by_profile.items():
        body += table(results, f"%%cluster on {prof or 'local (default profile)'}") + [""]
    body += LEGEND + [""]
    for prof, results in by_profile.items():
        body.append(f"== differences, %%cluster on {prof or 'local'}")
        body += diff_lines(results) + [""]
    return body


def history_line(by_profile: dict[str, list[Result]]) -> str:
    def tot(p: str) -> str:
        i, c, _, _ = totals(by_profile[p])
        return f"{i}/{c} ({pct(i, c).strip()})"
    first = next(iter(by_profile))
    _, _, ps, cs = totals(by_profile[first])
    ssh_tot = tot("fidssh") if "fidssh" in by_profile and first != "fidssh" else "-"
    return (f"history | {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} | {git_head():10} |"
            f" {tot(first):26} | {ssh_tot:25} | {cs / ps if ps else 0:.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    entries = load_manifest()
    if args.list:
        for e in entries:
            print(f"{e.id:28} {'data ' if e.reads_data else '     '} {e.licence:40} "
                  f"{e.repository}/blob/{e.commit[:10]}/{e.files[0]['path']}")
        return 0
    if args.ids:
        entries = [e for e in entries if e.id in args.ids]
    if args.materialise:
        materialise(entries, args.mirrors, args.corpus)
        return 0
    if args.recompare:
        return finish(args, recompare(entries, args.recompare), None)
    check_corpus(entries, args.corpus)

    import clusterjupyter

    base = Path(tempfile.mkdtemp(prefix="cj-fidelity-"))
    home = base / "cjhome"
    profiles = make_profiles(args, entries, base, home)
    env = {"CLUSTERJUPYTER_HOME": str(home), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    print(f"clusterjupyter from {Path(clusterjupyter.__file__).parent} (commit {git_head()})",
          flush=True)
    by_profile = run_all(entries, args.corpus, base, profiles, env)
    return finish(args, by_profile, base)


def finish(args: argparse.Namespace, by_profile: dict[str, list[Result]],
           base: Path | None) -> int:
    body = report_body(by_profile)
    print("\n".join(body))
    if args.report:
        write_report(args.report, body, history_line(by_profile), args.corpus.resolve(),
                     args.notes)
        print(f"report: {args.report}")
    if base is not None and args.keep:
        print(f"runs kept in {base}")
    elif base is not None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
