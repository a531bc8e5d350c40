"""Cell-by-cell comparison of notebook runs (pure functions, used by ``bench_fidelity.py``).

Outputs are reduced to tuples in order: ``("stream", name, text)`` (consecutive chunks of one
stream joined), ``("result", text/plain, mimes)``, ``("display", text/plain, mimes)``,
``("error", ename, evalue)``, after normalising what legitimately varies between runs (memory
addresses, ``%time``/``%timeit`` figures, the run's own directories). Error values are shown,
not compared. The status line that ``%%cluster`` displays is not an output of the cell.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

STATUS_RE = re.compile(r"^job [0-9a-f]{8} ")
VIEW_MIME = "application/vnd.jupyter.widget-view+json"


@dataclass
class CellRun:
    index: int            # index among the notebook's cells
    source: str
    outputs: list[tuple]  # normalised
    raw: list[dict]
    seconds: float


@dataclass
class Run:
    cells: dict[int, CellRun] = field(default_factory=dict)
    failure: str = ""


# -- normalising and comparing --------------------------------------------------------------------

_TIMEIT = re.compile(r"[\d.,]+ [nµum]?s ± [\d.,]+ [nµum]?s per loop \(mean ± std\. dev\. of "
                     r"[\d,]+ runs?, [\d,]+ loops? each\)")
_TIMEIT_OLD = re.compile(r"(\d+ loops?, )?best of \d+: [\d.]+ [nµum]?s per loop")
_SLOWEST = re.compile(r"The slowest run took [\d.]+ times longer than the fastest\.[^\n]*\n?")
_CPU = re.compile(r"CPU times: user [^\n]*")
_WALL = re.compile(r"Wall time: [\d.]+ [nµum]?s")
_ADDR = re.compile(r"0x[0-9a-fA-F]{4,}")
_TMP = re.compile(r"/tmp/[^\s'\"]+")


_FILES_NOTICE = re.compile(r"^clusterjupyter: files from job \w+: ([^\n]*)\n?", re.M)


def drop_files_notice(text: str) -> str:
    """The notice that files a job wrote came back into the working directory is the
    product's own line, like its status line; a notice of files refused or left behind stays."""
    def sub(m: re.Match) -> str:
        parts = m.group(1).split("; ")
        return "" if all(p.startswith("wrote ") for p in parts) else m.group(0)
    return _FILES_NOTICE.sub(sub, text)


def norm_text(text: str, cwd: Path, root: Path) -> str:
    text = text.replace(str(cwd), "<cwd>").replace(str(root), "<run>")
    text = _SLOWEST.sub("", text)
    text = _TIMEIT.sub("<timeit>", text)
    text = _TIMEIT_OLD.sub("<timeit>", text)
    text = _CPU.sub("CPU times: <time>", text)
    text = _WALL.sub("Wall time: <time>", text)
    text = _ADDR.sub("0x…", text)
    return _TMP.sub("<tmp>", text)


def _plain(data: dict) -> str:
    t = data.get("text/plain", "")
    return "".join(t) if isinstance(t, list) else t


def is_status(data: dict) -> bool:
    """The status line of a ``%%cluster`` cell (text, live widget, or static HTML once done)."""
    html = data.get("text/html", "")
    html = "".join(html) if isinstance(html, list) else html
    return bool(STATUS_RE.match(_plain(data))) and (
        VIEW_MIME in data or "cj-job-status" in html or set(data) == {"text/plain"})


def normalise(outputs: list[dict], cwd: Path, root: Path) -> list[tuple]:
    """One tuple per output in order; consecutive chunks of one stream are joined."""
    out: list[tuple] = []
    for o in outputs:
        kind = o.get("output_type")
        if kind == "stream":
            text = norm_text(drop_files_notice("".join(o.get("text", ""))), cwd, root)
            if not text:
                continue
            if out and out[-1][0] == "stream" and out[-1][1] == o["name"]:
                out[-1] = ("stream", o["name"], out[-1][2] + text)
            else:
                out.append(("stream", o["name"], text))
        elif kind == "execute_result":
            data = o.get("data", {})
            out.append(("result", norm_text(_plain(data), cwd, root), tuple(sorted(data))))
        elif kind == "display_data":
            data = o.get("data", {})
            if is_status(data):
                continue
            out.append(("display", norm_text(_plain(data), cwd, root), tuple(sorted(data))))
        elif kind == "error":
            out.append(("error", o.get("ename", ""), norm_text(o.get("evalue", ""), cwd, root)))
    return out


def comparable(outs: list[tuple]) -> list[tuple]:
    """What is compared: error values are shown, not compared (only the error's name)."""
    return [o[:2] if o[0] == "error" else o for o in outs]


def short(outs: list[tuple], width: int = 110) -> str:
    parts = []
    for o in outs:
        if o[0] == "stream":
            parts.append(f"{o[1]}:{o[2]!r}")
        elif o[0] == "error":
            parts.append(f"error {o[1]}" + (f": {o[2]}" if len(o) > 2 else ""))
        else:
            mimes = ",".join(m.split("/")[-1] for m in o[2])
            parts.append(f"{o[0]}[{mimes}] {o[1]!r}")
    s = " | ".join(parts) or "(no output)"
    return s if len(s) <= width else s[: width - 1] + "…"


def first_difference(a: list[tuple], b: list[tuple]) -> tuple[str, str]:
    """The first differing output of each side, for a short report line."""
    for x, y in zip(a, b, strict=False):
        if x != y:
            return short([x]), short([y])
    return short(a[len(b):] or []), short(b[len(a):] or [])


MAGIC_LINE = re.compile(r"^\s*(%|!)[^\n]*", re.M)
_NOFILE = re.compile(r"FileNotFoundError|No such file|does not exist|unable to open database")
_NOPICKLE = re.compile(r"cannot be pickled|could not be pickled|cannot travel|not picklable|"
                       r"can't pickle|cannot pickle|not sent|stayed in the job")
_MISSING = re.compile(r"name '(\w+)' is not defined")
_NOT_SENT = re.compile(r"not sent back from the cluster \(the other names were\): ([^\n]*)")


def not_sent(outs: list[tuple]) -> list[str]:
    """Names a ``%%cluster`` cell said it could not send back (its UnpicklableOutputWarning)."""
    names = []
    for o in outs:
        if o[0] == "stream":
            for m in _NOT_SENT.finditer(o[2]):
                names += re.findall(r"(?:^|; )(\w+): ", m.group(1))
    return names


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def classify(kernel: list[tuple], cluster: list[tuple], source: str,
             differed: list[str], untravelled: Collection[str] = ()) -> str:
    """A cause guessed from the form of a difference (the report says it is a guess).

    ``differed``: sources of the earlier cells of the notebook that differed (a name they
    bind may never have arrived: a cascade, not a cause of its own); ``untravelled``: names
    earlier cells could not send back."""
    k_err = {o[1] for o in kernel if o[0] == "error"}
    c_err = {o[1] for o in cluster if o[0] == "error"}
    c_text = " ".join(str(o[2]) for o in cluster if o[0] in ("stream", "error"))
    k_text = " ".join(str(o[2]) for o in kernel if o[0] in ("stream", "error"))
    if _NOFILE.search(c_text) and not _NOFILE.search(k_text):
        return "working directory"
    if _NOPICKLE.search(c_text) and not _NOPICKLE.search(k_text):
        return "cannot travel"
    if "cannot run inside %%cluster" in c_text:
        return "magic refused"
    if c_err - k_err:
        return _classify_error(cluster, c_err - k_err, k_err, c_text, source, differed,
                               untravelled)
    if k_err != c_err:
        return "error form"
    return _classify_outputs(kernel, cluster, k_text, c_text)


def _classify_error(cluster: list[tuple], new_err: set[str], k_err: set[str], c_text: str,
                    source: str, differed: list[str], untravelled: Collection[str]) -> str:
    missing = [m for o in cluster if o[0] == "error" for m in _MISSING.findall(str(o[2]))]
    magics = " ".join(m.group(0) for m in MAGIC_LINE.finditer(source))
    if missing:
        name = re.escape(missing[0])
        if missing[0] in untravelled:
            return "cannot travel"
        if any(re.search(rf"\b{name}\b", d) for d in differed):
            return "cascade"
        return "magic" if re.search(rf"\b{name}\b", magics) else "other"
    if "SyntaxError" in k_err or (new_err & {"SyntaxError", "UsageError"} and not magics):
        return "error form"
    if re.search(r"enable_gui|magic|UsageError", c_text) or magics:
        return "magic"
    return "cascade" if differed else "other"


def _classify_outputs(kernel: list[tuple], cluster: list[tuple], k_text: str,
                      c_text: str) -> str:
    if sorted(kernel) == sorted(cluster):
        return "figure/order"
    k_mimes = [o[2] for o in kernel if o[0] in ("display", "result")]
    c_mimes = [o[2] for o in cluster if o[0] in ("display", "result")]
    k_flat = {m for t in k_mimes for m in t}
    c_flat = {m for t in c_mimes for m in t}
    if len(k_mimes) == len(c_mimes) and k_flat != c_flat and (k_flat | c_flat) & {
            "image/svg+xml", "image/png", "application/pdf"}:
        return "kernel setting"
    if ("Figure(" in c_text and "Figure(" not in k_text) or len(k_mimes) != len(c_mimes):
        return "figure/order"
    for x, y in zip(kernel, cluster, strict=False):
        if x != y and x[0] == y[0] and x[0] in ("display", "result"):
            if "Figure size" in x[1] or _squash(x[1]) == _squash(y[1]):
                return "kernel setting"
    if [o[0] for o in kernel] != [o[0] for o in cluster]:
        return "figure/order"
    return "identity/value"


@dataclass
class Diff:
    notebook: str
    index: int
    first_line: str
    kernel: str
    cluster: str
    cause: str


@dataclass
class Result:
    id: str
    code_cells: int = 0
    compared: int = 0
    identical: int = 0
    excluded: int = 0
    plain_s: float = 0.0
    cluster_s: float = 0.0
    diffs: list[Diff] = field(default_factory=list)
    failure: str = ""


def compare(entry_id: str, plain1: Run, plain2: Run, cluster: Run) -> Result:
    res = Result(entry_id, code_cells=len(plain1.cells))
    res.failure = cluster.failure or plain1.failure
    differed: list[str] = []
    untravelled: set[str] = set()
    for i, a in plain1.cells.items():
        b = plain2.cells.get(i)
        if b is None or comparable(a.outputs) != comparable(b.outputs):
            res.excluded += 1
            continue
        c = cluster.cells.get(i)
        res.compared += 1
        if c is None:
            res.diffs.append(Diff(entry_id, i, _first(a.source), short(a.outputs), "(not run)",
                                  "not run"))
            continue
        untravelled.update(not_sent(c.outputs))
        res.plain_s += (a.seconds + b.seconds) / 2
        res.cluster_s += c.seconds
        if comparable(a.outputs) == comparable(c.outputs):
            res.identical += 1
            continue
        k, cl = first_difference(comparable(a.outputs), comparable(c.outputs))
        if any(o[0] == "error" for o in c.outputs):
            cl = short([o for o in c.outputs if o[0] == "error"][:1])
        cause = classify(a.outputs, c.outputs, a.source, differed, untravelled)
        if cause == "cannot travel" and not_sent(c.outputs):
            cl = "not sent back: " + ", ".join(not_sent(c.outputs))
        res.diffs.append(Diff(entry_id, i, _first(a.source), k, cl, cause))
        differed.append(a.source)
    return res


def _first(source: str) -> str:
    lines = [ln for ln in source.splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= 60 else first[:59] + "…"


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:5.1f} %" if b else "    -  "


def table(results: list[Result], title: str) -> list[str]:
    lines = [title, f"{'notebook':28} {'cells':>5} {'excl':>4} {'compared':>8} {'identical':>9}"
             f" {'':>7} {'kernel s':>8} {'cluster s':>9} {'ratio':>6}"]
    tot = Result("total")
    for r in results:
        ratio = f"{r.cluster_s / r.plain_s:6.1f}" if r.plain_s else "     -"
        lines.append(f"{r.id:28} {r.code_cells:5} {r.excluded:4} {r.compared:8} {r.identical:9}"
                     f" {pct(r.identical, r.compared)} {r.plain_s:8.1f} {r.cluster_s:9.1f} {ratio}"
                     + (f"  ({r.failure})" if r.failure else ""))
        for f in ("code_cells", "excluded", "compared", "identical", "plain_s", "cluster_s"):
            setattr(tot, f, getattr(tot, f) + getattr(r, f))
    ratio = f"{tot.cluster_s / tot.plain_s:6.1f}" if tot.plain_s else "     -"
    lines.append(f"{'TOTAL':28} {tot.code_cells:5} {tot.excluded:4} {tot.compared:8}"
                 f" {tot.identical:9} {pct(tot.identical, tot.compared)} {tot.plain_s:8.1f}"
                 f" {tot.cluster_s:9.1f} {ratio}")
    return lines


def totals(results: list[Result]) -> tuple[int, int, float, float]:
    return (sum(r.identical for r in results), sum(r.compared for r in results),
            sum(r.plain_s for r in results), sum(r.cluster_s for r in results))


def diff_lines(results: list[Result]) -> list[str]:
    lines = []
    causes: dict[str, int] = {}
    for r in results:
        for d in r.diffs:
            causes[d.cause] = causes.get(d.cause, 0) + 1
    if causes:
        lines.append("differences by cause (guessed from their form): " + ", ".join(
            f"{k} {v}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1])))
    for r in results:
        for d in r.diffs:
            lines.append(f"- {d.notebook} cell {d.index} [{d.cause}] {d.first_line!r}")
            lines.append(f"    kernel : {d.kernel}")
            lines.append(f"    cluster: {d.cluster}")
    return lines
