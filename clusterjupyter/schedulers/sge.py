"""(Son of / Open / Univa) Grid Engine: ``qsub`` / ``qstat -xml`` / ``qacct`` / ``qdel``.

A PBS dialect (as in ipyparallel): the commands, holds and parsing helpers come from
:class:`~.pbs.PBSScheduler`; this module changes the directives, the state letters and where
finished jobs are found. Status of all active jobs is one ``qstat -xml -u USER`` call; a job that
has left ``qstat`` is looked up with ``qacct -j ID`` (exit status, ``failed`` code, wallclock,
``maxvmem``), once it is there — accounting may lag a few seconds, and a cluster without
accounting simply leaves the exit file to speak.

Profile options (``scheduler_options``, see :meth:`SGEScheduler.valid_options`), besides
PBS's ``bin_dir``, per-command paths (``qsub``, ``qstat``, ``qacct``, ``qdel``, ``qhold``,
``qrls``) and ``command_env`` — Grid Engine's commands need ``SGE_ROOT`` (and ``SGE_CELL``
unless it is ``default``): ``{SGE_ROOT = "/var/lib/gridengine", SGE_CELL = "default"}`` when
the login environment does not set them (a non-interactive SSH session often does not):

``pe``
    parallel environment for ``--cpus`` > 1 (default ``"smp"``).
``gpu_resource``
    the complex a GPU request is made with (default ``"gpu"``: ``-l gpu=N``).
``accounting_wait``
    seconds a job that ran and left ``qstat`` is still reported as finishing while ``qacct``
    has no record of it yet (default 30; Grid Engine writes accounting every flush interval).
"""

from __future__ import annotations

import math
import re
import signal
import time
import xml.etree.ElementTree as ET
from typing import Any, ClassVar, Sequence

from ..errors import ClusterError
from ..states import JobState
from ..sweep import task_set
from ..text import clock_seconds, hms, signal_name
from ..transports.base import Transport
from .base import JobSpec, NativeStatus, QueueEntry
from .pbs import PBSScheduler, integer

_S = JobState

#: how a job is described that qacct says failed before it ran (``failed`` 1–99 but 37)
_NOT_STARTED = "the job could not be started"


class SGEScheduler(PBSScheduler):
    name = "sge"
    directive_prefix = "#$"
    job_id_regexp = r"Your job(?:-array)? (?P<job_id>\d+)"
    poll_interval = 2.0
    name_limit = 64
    operations = {**PBSScheduler.operations, "status": ("qstat", "-xml"),
                "accounting": ("qacct", "-j"), "show": ("qstat", "-j")}
    option_help = {
        "pe": 'parallel environment for --cpus > 1 (default "smp")',
        "gpu_resource": 'the complex a GPU request is made with (default "gpu": -l gpu=N)',
        "accounting_wait": "seconds a finished job may wait for its qacct record (default 30)",
    }
    #: PBS options Grid Engine's commands have no use for (qstat -x, PBS Pro's qsub -J)
    options_not_taken: ClassVar[tuple[str, ...]] = ("history", "arrays")
    #: qsub takes the output file from the script's directives
    log_on_command_line = False

    #: a Grid Engine state is a string of letters ("qw", "hqw", "dr", "Eqw"); the first letter
    #: of this table found in it decides (error before running before held before queued)
    state_map: ClassVar[dict[str, JobState]] = {
        "E": _S.FAILED, "r": _S.RUNNING, "t": _S.RUNNING, "s": _S.RUNNING, "S": _S.RUNNING,
        "T": _S.RUNNING, "h": _S.PENDING, "q": _S.PENDING, "w": _S.PENDING,
    }
    state_reasons: ClassVar[dict[str, str]] = {
        "E": "in error state", "t": "being started", "s": "suspended", "S": "suspended",
        "T": "suspended (threshold)", "h": "held (release it to run)", "q": "queued",
        "w": "queued",
    }

    def __init__(self, transport: Transport, options: dict[str, Any] | None = None):
        super().__init__(transport, options)
        self._ran: set[str] = set()              # seen running (so accounting will know it)
        self._gone: dict[str, float] = {}        # left qstat at, accounting not there yet

    # -- the script -------------------------------------------------------------------------
    def directives(self, spec: JobSpec) -> list[str]:
        res = spec.resources
        if res.qos:
            raise self._unsupported("qos", "--directive '-l NAME=VALUE'")
        if res.constraint:
            raise self._unsupported("constraint", "--directive '-l arch=lx-amd64' (or your "
                                    "site's host complex)")
        if res.nodes and res.nodes > 1:
            raise self._unsupported("nodes", "a parallel environment across hosts, e.g. "
                                    "--directive '-pe mpi 16'")
        out = [f"-N {self.job_name(spec.name)}", "-S /bin/sh", "-j y",
               f"-o {self.safe_path(spec.paths.scheduler_log)}"]
        if res.time:
            out.append(f"-l h_rt={hms(res.time)}")
        slots = int(res.cpus or 1)
        if slots > 1:
            out.append(f"-pe {self._word('pe', 'smp')} {slots}")
        if res.mem:
            out.append(f"-l h_vmem={math.ceil(res.mem / slots)}M")     # h_vmem is per slot
        if res.gpus:
            out.append(f"-l {self._word('gpu_resource', 'gpu')}={self.gpu_count(res.gpus)}")
        if res.partition:
            out.append(f"-q {res.partition}")
        if res.account:
            out.append(f"-P {res.account}")
        return out + [self.free_directive(d) for d in res.directives]

    # -- job arrays (sweeps): tasks 1..N are elements 0..N-1; native ids "ARRAY.TASK" ----------
    array_index = "$((SGE_TASK_ID - 1))"

    def submit_array(self, spec: JobSpec, indices: Sequence[int], max_running: int) -> str:
        # -t takes one range: a task between the indices whose element is not part of this
        # array (a retry of some elements) finds no directory and exits at once
        throttle = ["-tc", str(int(max_running))] if max_running else []
        argv = self.argv("submit", "-t", f"{min(indices) + 1}-{max(indices) + 1}", *throttle,
                         self.safe_path(spec.paths.script))
        return self.parse_job_id(self.call_once(spec.paths.dir, argv).stdout)

    def element_native_id(self, array_id: str, index: int) -> str:
        return f"{array_id}.{index + 1}"

    def array_of(self, native_id: str) -> str:
        return native_id.split(".")[0]

    def _array_status(self, ids: list[str], jobs: list[dict[str, str]]
                      ) -> dict[str, NativeStatus]:
        """Elements of arrays: from the qstat listing (its ``tasks`` ranges), else one
        ``qacct -j ARRAY`` per array that has elements gone from qstat."""
        out: dict[str, NativeStatus] = {}
        gone: dict[str, list[str]] = {}
        for native_id in ids:
            array, _, task = native_id.partition(".")
            for job in jobs:
                if job.get("JB_job_number") == array and int(task) in task_set(
                        job.get("tasks", "")):
                    out[native_id] = self._listed(job)
                    break
            else:
                gone.setdefault(array, []).append(native_id)
        for array, members in gone.items():
            done = self.call(self.argv("accounting", array), tolerate=True, retry=True)
            if done.returncode != 0:
                continue
            latest: dict[str, dict[str, str]] = {}
            for rec in parse_qacct(done.stdout):
                if rec.get("jobnumber") == array:
                    key = f"{array}.{rec.get('taskid', '').strip()}"
                    if rec.get("end_time", "") >= latest.get(key, {}).get("end_time", ""):
                        latest[key] = rec
            for native_id in members:
                if native_id in latest:
                    out[native_id] = self.finished(latest[native_id])
        return out

    def _word(self, option: str, default: str) -> str:
        value = str(self.options.get(option, default))
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ClusterError(f"sge: scheduler option {option} must be a name, not {value!r}")
        return value

    # -- status -----------------------------------------------------------------------------
    def status(self, native_ids: Sequence[str], job_ids: Sequence[str]) -> dict[str, NativeStatus]:
        if not native_ids:
            return {}
        ids = list(dict.fromkeys(native_ids))
        jobs = self._qstat_xml(self.user())
        listed = {job["JB_job_number"]: job for job in jobs}
        out_arrays = self._array_status([i for i in ids if "." in i], jobs)
        ids = [i for i in ids if "." not in i]
        out = {}
        now = time.time()
        wait = float(self.options.get("accounting_wait", 30))
        for native_id in ids:
            job = listed.get(native_id)
            if job is not None:
                out[native_id] = self._listed(job)
                if out[native_id].state is _S.RUNNING:
                    self._ran.add(native_id)
                continue
            # gone from qstat: finished (or deleted while queued); accounting says how
            found = self.accounting(native_id)
            if found is not None:
                out[native_id] = found
                self._ran.discard(native_id)
                self._gone.pop(native_id, None)
            elif native_id in self._ran and now - self._gone.setdefault(native_id, now) < wait:
                out[native_id] = NativeStatus(_S.RUNNING, "ended; waiting for its accounting "
                                              "record", native="finishing")
        return {**out, **out_arrays}

    def _qstat_xml(self, user: str) -> list[dict[str, str]]:
        return parse_qstat_jobs(self.call(self.argv("status", "-u", user), retry=True).stdout)

    def _listed(self, job: dict[str, str]) -> NativeStatus:
        """A job ``qstat -xml`` lists; why it is in error state, if it is (``qstat -j``)."""
        word = job.get("state", "")
        st = NativeStatus(self.map_state(word), self.state_reasons.get(self.letter(word), ""),
                          native=word, host=job.get("queue_name", "").partition("@")[2])
        if st.state is _S.FAILED:
            st.reason = self._error_reason(job["JB_job_number"]) or st.reason
        return st

    def _error_reason(self, native_id: str) -> str:
        """Why a job is in error state (``qstat -j``), for the user to read."""
        done = self.call(self.argv("show", native_id), tolerate=True, retry=True)
        text = error_reason(done.stdout)
        return f"in error state: {text} (qdel {native_id} to remove it)" if text else ""

    def accounting(self, native_id: str) -> NativeStatus | None:
        """How a finished job ended, from ``qacct -j`` (None: accounting does not know it)."""
        done = self.call(self.argv("accounting", native_id), tolerate=True, retry=True)
        if done.returncode != 0:
            return None
        records = parse_qacct(done.stdout)
        mine = [r for r in records if r.get("jobnumber") == native_id]
        if not mine:
            return None
        return self.finished(max(mine, key=lambda r: r.get("end_time", "")))

    def finished(self, rec: dict[str, str]) -> NativeStatus:
        """A ``qacct`` record as a final NativeStatus."""
        failed_text = rec.get("failed", "0")
        failed = integer(failed_text) or 0
        code = integer(rec.get("exit_status"))
        wall = clock_seconds(rec.get("ru_wallclock"))
        category = rec.get("category", "")
        m = re.search(r"h_rt=([^,\s]+)", category)
        limit = clock_seconds(m.group(1)) if m else None
        host = rec.get("hostname", "")
        if limit and wall is not None and wall >= limit and (code or failed):
            return NativeStatus(_S.TIMEOUT, "reached its time limit (h_rt, --time)", code,
                                native="qacct", host=host)
        if failed == 37:      # qmaster enforced h_rt, h_cpu or h_vmem
            vmem, cap = _size(rec.get("maxvmem")), _vmem_limit(category, rec.get("slots"))
            if vmem and cap and vmem >= 0.95 * cap:
                return NativeStatus(_S.OUT_OF_MEMORY, "exceeded its memory limit (h_vmem, "
                                    "--mem)", code, native="qacct", host=host)
            return NativeStatus(_S.TIMEOUT, "reached its time limit (h_rt, --time)", code,
                                native="qacct", host=host)
        if failed and failed != 100:   # 100: "assumedly after job" (killed by a signal)
            text = failed_text.split(":", 1)[1].strip() if ":" in failed_text else failed_text
            return NativeStatus(_S.FAILED, f"{_NOT_STARTED}: {text}", code, native="qacct",
                                host=host)
        if not code:
            return NativeStatus(_S.COMPLETED, "", code, native="qacct", host=host)
        if code > 128:
            signum = code - 128
            state = _S.CANCELLED if signum in (signal.SIGKILL, signal.SIGTERM) else _S.FAILED
            # Grid Engine's qdel sends SIGKILL: that is how a deleted job ends
            how = " (deleted, e.g. with qdel)" if signum == signal.SIGKILL else ""
            return NativeStatus(state, f"killed by {signal_name(signum)}{how}", code,
                                native="qacct", host=host)
        return NativeStatus(_S.FAILED, f"exited with code {code}", code, native="qacct",
                            host=host)

    # -- the rest ---------------------------------------------------------------------------
    def queue(self, all_users: bool = False) -> list[QueueEntry]:
        out = []
        now = time.time()
        for job in self._qstat_xml("*" if all_users else self.user()):
            st = self._listed(job)
            started = _iso(job.get("JAT_start_time"))
            queue, _, host = job.get("queue_name", "").partition("@")
            out.append(QueueEntry(native_id=job.get("JB_job_number", ""),
                                  name=job.get("JB_name", ""), user=job.get("JB_owner", ""),
                                  state=st.state, native=st.native, reason=st.reason,
                                  elapsed=hms(int(now - started)) if started else "",
                                  partition=queue, nodes=host))
        return out


def parse_qstat_jobs(text: str) -> list[dict[str, str]]:
    """``qstat -xml`` output: one dict per job (``JB_job_number``, ``state``, ``queue_name`` …)."""
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as e:
        raise ClusterError(f"sge: qstat -xml printed XML that cannot be read: {e}") from None
    return [{child.tag: (child.text or "").strip() for child in el}
            for el in root.iter("job_list")]


def error_reason(text: str) -> str:
    """The ``error reason`` of ``qstat -j`` output (a job in state E)."""
    for line in text.splitlines():
        if line.startswith("error reason"):
            return line.split(":", 1)[1].strip() if ":" in line else line
    return ""


def parse_qacct(text: str) -> list[dict[str, str]]:
    """``qacct -j`` output: one dict per record (``====`` lines separate records)."""
    records: list[dict[str, str]] = []
    rec: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("====="):
            rec = {}
            records.append(rec)
            continue
        if rec is None or not line.strip():
            continue
        key, _, value = line.partition(" ")
        rec[key] = value.strip()
    return records


def _size(text: str | None) -> float | None:
    """Bytes from Grid Engine's ``12.3M``, ``500M``, ``2G``, ``10.305MB``, ``100``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)B?\s*", text or "")
    if not m:
        return None
    return float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower())


def _vmem_limit(category: str, slots: str | None) -> float | None:
    m = re.search(r"h_vmem=([^,\s]+)", category)
    per_slot = _size(m.group(1)) if m else None
    return per_slot * (integer(slots) or 1) if per_slot else None


def _iso(text: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(text or "", "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
