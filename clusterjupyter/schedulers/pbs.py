"""PBS / Torque (and PBS Pro): ``qsub`` / ``qstat -f`` / ``qdel`` / ``qhold`` / ``qrls``.

Everything PBS-specific is data (directive prefix, state table, exit-status table) plus short
hooks; :mod:`.sge` inherits from this class. The job's final state comes from the runner's exit
file; ``qstat`` explains the deaths the runner could not report (walltime, memory).

Status of all active jobs is one ``qstat -f ID …`` call. ``-x`` is added where ``qstat``
takes it (Torque: XML output; PBS Pro: finished jobs too); it is tried once and dropped when
``qstat`` refuses it (the ``slurm-wlm-torque`` wrappers do). Both the text and the XML forms
are read.

Profile options (``scheduler_options``, see :meth:`PBSScheduler.valid_options`): ``bin_dir``
(directory holding ``qsub``, ``qstat`` …, run by absolute path, so a PBS installation — or the
Torque wrappers over SLURM — that is not first on ``PATH`` or shares command names with another
scheduler is used without touching anybody's ``PATH``), one path per command (``qsub = …``,
wins over ``bin_dir``), ``command_env`` (variables for these commands only, e.g.
``{PBS_SERVER = "head"}``; the job's own environment is the profile's ``env``) and
``history`` (``"auto"``, the default, ``true`` or ``false``: whether ``qstat`` gets ``-x``)
and ``arrays`` (``"torque"``, the default: a sweep is ``qsub -t LIST%MAX``; ``"pro"``: PBS Pro's
``qsub -J X-Y``). An array's elements are ``ID[N]`` (``qstat -t`` lists them all, ``qdel ID[]``
stops the whole array); the job finds its index in ``PBS_ARRAYID`` (Torque) or
``PBS_ARRAY_INDEX`` (PBS Pro).
"""

from __future__ import annotations

import re
import signal
import time
import xml.etree.ElementTree as ET
from typing import Any, ClassVar, Sequence

from ..errors import ClusterError
from ..states import JobState
from ..sweep import array_ranges
from ..text import clock_seconds, hms, signal_name
from ..transports.base import Completed, Transport
from .base import JobSpec, NativeStatus, QueueEntry, Scheduler, SchedulerError

_S = JobState

#: what a path handed to qsub may contain: some qsub implementations (the slurm-wlm-torque
#: wrappers) pass it through a shell, PBS reads ``host:path`` in ``-o``
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+,=@-]+")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_ATTR = re.compile(r"^\s+([A-Za-z_][\w.]*) = ?(.*)$")


class PBSScheduler(Scheduler):
    name = "pbs"
    directive_prefix = "#PBS"
    #: ``123``, ``123.server.domain`` or an array ``123[].server``
    job_id_regexp = r"(?m)^\s*(?P<job_id>\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.-]+)?)\s*$"
    poll_interval = 3.0
    #: longest job name qsub takes everywhere (Torque before 4 and PBS Pro before 13: 15)
    name_limit: ClassVar[int] = 15
    operations: ClassVar[dict[str, tuple[str, ...]]] = {
        "submit": ("qsub",), "status": ("qstat", "-f"), "cancel": ("qdel",),
        "hold": ("qhold",), "release": ("qrls",),
    }
    option_help: ClassVar[dict[str, str]] = {
        "history": '"auto" (default), true or false: whether qstat gets -x (finished jobs)',
        "arrays": '"torque" (qsub -t LIST%MAX, the default) or "pro" (PBS Pro: qsub -J X-Y)',
    }
    #: a failed qdel of a job that ended or is unknown (the SLURM wrappers print nothing)
    cancel_gone = (r"(?is)\A\s*\Z|unknown job|invalid state|finished|completed|does not exist|"
                   r"already")
    #: the output file is repeated on qsub's command line: the Torque wrappers over SLURM
    #: otherwise give sbatch their own ``-o``/``-e``, which win over the script's ``#PBS -o``
    log_on_command_line: ClassVar[bool] = True

    state_map: ClassVar[dict[str, JobState]] = {
        "Q": _S.PENDING, "H": _S.PENDING, "W": _S.PENDING, "T": _S.PENDING, "M": _S.PENDING,
        "R": _S.RUNNING, "E": _S.RUNNING, "S": _S.RUNNING, "U": _S.RUNNING, "B": _S.RUNNING,
        "C": _S.COMPLETED, "F": _S.COMPLETED, "X": _S.COMPLETED,
    }
    #: the state letters in plain words (pending and running ones)
    state_reasons: ClassVar[dict[str, str]] = {
        "Q": "queued", "H": "held (release it to run)", "W": "waiting for its start time",
        "T": "being moved to its execution queue", "M": "moved to another server",
        "S": "suspended", "E": "exiting", "U": "suspended (workstation busy)",
    }
    #: how a queued job's ``comment`` starts when the scheduler says it can never run (PBS Pro;
    #: Torque and the SLURM wrappers leave no such word)
    never_comments: ClassVar[tuple[str, ...]] = ("Can Never Run",)
    #: ``exit_status`` values that are not the script's own exit code: Torque 4–6
    #: (JOB_EXEC_OVERLIMIT_*) and PBS Pro (JOB_EXEC_KILL_*)
    exit_statuses: ClassVar[dict[int, tuple[JobState, str]]] = {
        -10: (_S.OUT_OF_MEMORY, "exceeded its memory limit (--mem)"),
        -11: (_S.TIMEOUT, "reached its walltime limit (--time)"),
        -12: (_S.TIMEOUT, "reached its CPU time limit (cput)"),
        -24: (_S.FAILED, "used more CPUs than it asked for"),
        -25: (_S.FAILED, "used more CPUs than it asked for"),
        -26: (_S.OUT_OF_MEMORY, "exceeded its virtual memory limit (--mem)"),
        -27: (_S.OUT_OF_MEMORY, "exceeded its memory limit (--mem)"),
        -28: (_S.TIMEOUT, "reached its CPU time limit (cput)"),
        -29: (_S.TIMEOUT, "reached its walltime limit (--time)"),
    }

    def __init__(self, transport: Transport, options: dict[str, Any] | None = None):
        super().__init__(transport, options)
        history = self.options.get("history", "auto")
        if history not in (True, False, "auto"):
            raise ClusterError(f"{self.name}: scheduler option history must be true, false or "
                               f'"auto", not {history!r}')
        self._history: bool | None = None if history == "auto" else bool(history)
        self._arrays = str(self.options.get("arrays", "torque")).lower()
        if self._arrays not in ("torque", "pro"):
            raise ClusterError(f'{self.name}: scheduler option arrays must be "torque" or '
                               f'"pro", not {self.options["arrays"]!r}')
        self._user: str | None = None

    # -- the script -------------------------------------------------------------------------
    def directives(self, spec: JobSpec) -> list[str]:
        res = spec.resources
        if res.qos:
            raise self._unsupported("qos", "--directive '-l qos=NAME'")
        out = [f"-N {self.job_name(spec.name)}", "-j oe",
               f"-o {self.safe_path(spec.paths.scheduler_log)}"]
        if res.time:
            out.append(f"-l walltime={hms(res.time)}")
        if res.nodes or res.cpus or res.gpus or res.constraint:
            nodes = f"nodes={int(res.nodes or 1)}"
            if res.cpus:
                nodes += f":ppn={int(res.cpus)}"
            if res.gpus:
                nodes += f":gpus={self.gpu_count(res.gpus)}"
            if res.constraint:
                nodes += "".join(f":{f}" for f in self.features(res.constraint))
            out.append(f"-l {nodes}")
        if res.mem:
            out.append(f"-l mem={int(res.mem)}mb")
        if res.partition:
            out.append(f"-q {res.partition}")
        if res.account:
            out.append(f"-A {res.account}")
        return out + [self.free_directive(d) for d in res.directives]

    def job_name(self, name: str) -> str:
        """A name every qsub takes: starts with a letter; letters, digits, ``_.-`` only."""
        text = _NAME_UNSAFE.sub("_", name.strip())
        if not text[:1].isalpha():
            text = "j" + text
        return text[:self.name_limit]

    def safe_path(self, path: str) -> str:
        if not _SAFE_PATH.fullmatch(path):
            raise ClusterError(
                f"{self.name}: the job directory {path!r} has characters qsub cannot take "
                "safely (some qsub commands pass paths through a shell); choose a profile "
                "workdir made of letters, digits and _./+,=@- only")
        return path

    def gpu_count(self, gpus: str) -> int:
        if not gpus.isdigit():
            raise ClusterError(f"{self.name}: --gpus takes a count here, not {gpus!r}; ask "
                               "for a GPU type with --constraint or --directive")
        return int(gpus)

    def features(self, constraint: str) -> list[str]:
        parts = [p for p in re.split(r"[,:&]", constraint) if p.strip()]
        if not parts or not all(re.fullmatch(r"[A-Za-z0-9_.-]+", p.strip()) for p in parts):
            raise ClusterError(f"{self.name}: --constraint takes node properties like "
                               f"'bigmem,ib' here, not {constraint!r}")
        return [p.strip() for p in parts]

    def free_directive(self, text: str) -> str:
        d = text.strip()
        if d.startswith(self.directive_prefix):
            d = d[len(self.directive_prefix):].strip()
        if not d.startswith("-") or re.search(r"[\x00-\x1f\x7f]", d):
            raise ClusterError(f"{self.name}: invalid directive {text!r}: write it as qsub "
                               "options on one line, e.g. -l software=matlab")
        return d

    def _unsupported(self, what: str, instead: str) -> ClusterError:
        return ClusterError(f"{self.name}: --{what} has no {self.name} equivalent; use "
                            f"{instead}")

    def map_state(self, native: str) -> JobState:
        """A state is a letter (PBS: ``R``) or a string of letters (Grid Engine: ``hqw``,
        ``Eqw``): the first letter of ``state_map`` found in it decides."""
        letter = self.letter(native)
        if letter:
            return self.state_map[letter]
        return _S.LOST if not native.strip() else _S.RUNNING

    def letter(self, native: str) -> str:
        return next((c for c in self.state_map if c in native.strip()), "")

    # -- commands ---------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> str:
        log = ["-j", "oe", "-o", self.safe_path(spec.paths.scheduler_log)] \
            if self.log_on_command_line else []
        argv = self.argv("submit", *log, self.safe_path(spec.paths.script))
        return self.parse_job_id(self.call_once(spec.paths.dir, argv).stdout)

    # -- job arrays (sweeps): elements ``ID[N]`` of the array ``ID[]`` ---------------------
    #: Torque names the index PBS_ARRAYID, PBS Pro PBS_ARRAY_INDEX
    array_index = "${PBS_ARRAYID:-${PBS_ARRAY_INDEX}}"

    def submit_array(self, spec: JobSpec, indices: Sequence[int], max_running: int) -> str:
        if self._arrays == "pro":
            # -J takes one range of at least two indices: an index between (or after) the
            # elements of this array finds no element directory and exits at once
            lo, hi = min(indices), max(indices)
            flags = ["-J", f"{lo}-{max(hi, lo + 1)}"]
            if max_running:
                flags += ["-W", f"max_run_subjobs={int(max_running)}"]
        else:
            flags = ["-t", array_ranges(indices) + (f"%{int(max_running)}" if max_running
                                                   else "")]
        log = ["-j", "oe", "-o", self.safe_path(spec.paths.scheduler_log)] \
            if self.log_on_command_line else []
        argv = self.argv("submit", *flags, *log, self.safe_path(spec.paths.script))
        return self.parse_job_id(self.call_once(spec.paths.dir, argv).stdout)

    def element_native_id(self, array_id: str, index: int) -> str:
        """``123[].server`` -> ``123[4].server``."""
        if "[]" in array_id:
            return array_id.replace("[]", f"[{index}]", 1)
        return re.sub(r"^(\d+)", rf"\g<1>[{index}]", array_id, count=1)

    def array_of(self, native_id: str) -> str:
        return re.sub(r"\[\d+\]", "[]", native_id, count=1)

    def status_command(self, ids: Sequence[str], history: bool) -> list[str]:
        # -t: every element of the arrays named ID[] (else one summary line per array)
        expand = ["-t"] if any("[]" in i for i in ids) else []
        return self.argv("status", *(["-x"] if history else []), *expand, *ids)

    def status(self, native_ids: Sequence[str], job_ids: Sequence[str]) -> dict[str, NativeStatus]:
        if not native_ids:
            return {}
        ids = list(dict.fromkeys(native_ids))
        # one query: single jobs by id, the elements of an array through the array's id
        asked = list(dict.fromkeys(self.array_of(i) if re.search(r"\[\d+\]", i) else i
                                   for i in ids))
        out = {}
        for attrs in self._qstat(asked):
            native_id = _match(attrs.get("job id", ""), ids)
            if native_id is not None:
                out[native_id] = self.native(attrs)
        return out

    def _qstat(self, ids: Sequence[str]) -> list[dict[str, str]]:
        """``qstat -f [-x] IDS`` (all jobs without ids), parsed; unknown ids are left out."""
        if self._history is not False:
            done = self.call(self.status_command(ids, True),
                             tolerate=lambda d: _refused(d) or _unknown(d), retry=True)
            if not _refused(done):
                self._history = True
                return parse_qstat(done.stdout)
            if self._history:
                raise SchedulerError(self.status_command(ids, True), done.returncode,
                                     done.stdout, done.stderr, self.transport.where)
            self._history = False          # this qstat has no -x: never ask again
        done = self.call(self.status_command(ids, False), tolerate=_unknown, retry=True)
        return parse_qstat(done.stdout)

    def native(self, attrs: dict[str, str]) -> NativeStatus:
        """One job of ``qstat -f`` (attribute names in lower case) as a NativeStatus (pure)."""
        word = attrs.get("job_state", "").strip()
        state = self.map_state(word) if word else _S.LOST
        host = attrs.get("exec_host", "").split("+")[0].split("/")[0]
        if not state.final:
            comment = attrs.get("comment", "").strip()
            never = state is _S.PENDING and comment.startswith(self.never_comments)
            reason = comment if never else self.state_reasons.get(self.letter(word), "")
            return NativeStatus(state, reason, native=word, host=host, never=never)
        code = integer(attrs.get("exit_status"))
        state, reason = self.ended(code, clock_seconds(attrs.get("resource_list.walltime")),
                                   _used(attrs))
        return NativeStatus(state, reason, code, native=word, host=host)

    def ended(self, code: int | None, limit: int | None,
              used: int | None) -> tuple[JobState, str]:
        """How a job that left with ``exit_status`` ``code`` ended (pure)."""
        if code in self.exit_statuses:
            return self.exit_statuses[code]
        if code != 0 and limit and used is not None and used >= limit:
            return _S.TIMEOUT, "reached its walltime limit (--time)"
        if code is None:
            # no exit_status (the SLURM wrappers): whether it went well only the exit file says
            return _S.COMPLETED, ("ended without an exit file, and qstat does not say how (see "
                                  "the scheduler log)")
        if code == 0:
            return _S.COMPLETED, ""
        if code > 256 or 128 < code < 128 + 65:
            signum = code - 256 if code > 256 else code - 128
            if signum in (signal.SIGTERM, signal.SIGINT):
                return _S.CANCELLED, f"terminated by {signal_name(signum)}"
            return _S.FAILED, f"killed by {signal_name(signum)}"
        return _S.FAILED, f"exited with code {code}"

    def user(self) -> str:
        """The login name jobs are submitted as (asked once)."""
        if self._user is None:
            self._user = self.call(["id", "-un"], retry=True).stdout.strip()
        return self._user

    def queue(self, all_users: bool = False) -> list[QueueEntry]:
        me = None if all_users else self.user()
        done = self.call(self.status_command([], False), tolerate=_unknown, retry=True)
        out = []
        for attrs in parse_qstat(done.stdout):
            owner = attrs.get("job_owner", "").split("@")[0]
            st = self.native(attrs)
            if (me and owner != me) or st.state.final:
                continue
            used = clock_seconds(attrs.get("resources_used.walltime"))
            if used is None and st.state is _S.RUNNING:
                start = _date(attrs.get("start_time")) or _date(attrs.get("stime")) \
                    or _date(attrs.get("mtime"))
                used = int(time.time() - start) if start else None
            out.append(QueueEntry(native_id=attrs.get("job id", ""),
                                  name=attrs.get("job_name", ""), user=owner,
                                  state=st.state, native=st.native, reason=st.reason,
                                  elapsed=hms(used) if used is not None else "",
                                  partition=attrs.get("queue", ""), nodes=st.host))
        return out


# -- parsing ----------------------------------------------------------------------------------

def parse_qstat(text: str) -> list[dict[str, str]]:
    """``qstat -f`` text or Torque's ``qstat -f -x`` XML: one dict per job."""
    return parse_qstat_xml(text) if text.lstrip().startswith("<") else parse_qstat_full(text)


def parse_qstat_full(text: str) -> list[dict[str, str]]:
    """``qstat -f`` text: one dict per job, attribute names in lower case, ``"job id"`` too.
    Long values wrapped onto indented lines without ``name =`` are joined again."""
    jobs: list[dict[str, str]] = []
    job: dict[str, str] | None = None
    last = ""
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            job = {"job id": line.split(":", 1)[1].strip()}
            jobs.append(job)
            last = ""
            continue
        if job is None or not line.strip():
            continue
        m = _ATTR.match(line)
        if m:
            last = m.group(1).lower()
            job[last] = m.group(2).strip()
        elif last and line[:1] in " \t":
            job[last] += line.strip()
    return jobs


def parse_qstat_xml(text: str) -> list[dict[str, str]]:
    """Torque's ``qstat -x`` XML, in the same shape as :func:`parse_qstat_full`."""
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as e:
        raise ClusterError(f"pbs: qstat -x printed XML that cannot be read: {e}") from None
    jobs = []
    for el in root.iter("Job"):
        job: dict[str, str] = {}
        for child in el:
            if len(child):
                for sub in child:
                    job[f"{child.tag}.{sub.tag}".lower()] = (sub.text or "").strip()
            else:
                job[child.tag.lower()] = (child.text or "").strip()
        job["job id"] = job.pop("job_id", "")
        jobs.append(job)
    return jobs


def _match(job_id: str, ids: Sequence[str]) -> str | None:
    """Which of our native ids ``job_id`` is (``123`` and ``123.server`` are the same job)."""
    if job_id in ids:
        return job_id
    short = job_id.split(".")[0]
    for native_id in ids:
        if native_id.split(".")[0] == short:
            return native_id
    return None


def _refused(done: Completed) -> bool:
    """Did qstat reject its options (rather than not know the jobs)?"""
    text = done.stderr.lower()
    return done.returncode != 0 and not done.stdout.strip() and (
        "option" in text or "usage" in text)


def _unknown(done: Completed) -> bool:
    """A qstat that failed only because it does not know (some of) the jobs: Torque exits
    153 with "Unknown Job Id", the SLURM wrappers 153 with nothing; jobs it knows are still
    printed."""
    return "Job Id" in done.stdout or "<Data>" in done.stdout or done.returncode == 153 \
        or "unknown job" in done.stderr.lower()


def _used(attrs: dict[str, str]) -> int | None:
    """Seconds a finished job ran, from ``resources_used.walltime`` or its times."""
    used = clock_seconds(attrs.get("resources_used.walltime"))
    if used is None:
        # the slurm-wlm-torque wrappers: mtime = start, ctime = end (Torque: the reverse)
        start, end = _date(attrs.get("mtime")), _date(attrs.get("ctime"))
        used = int(end - start) if start and end and end >= start else None
    return used


def integer(text: str | None) -> int | None:
    """The leading integer of ``text`` (``137   (Killed)`` -> 137); None if there is none."""
    try:
        return int(str(text).split()[0]) if text is not None and str(text).strip() else None
    except ValueError:
        return None


def _date(text: str | None) -> float | None:
    """Epoch seconds from qstat's ``Sat Nov 21 11:24:27 2026`` (local time)."""
    if not text:
        return None
    text = text.strip()
    if text.isdigit():
        return float(text)                 # epoch seconds (Torque's XML)
    try:
        return time.mktime(time.strptime(text, "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return None
