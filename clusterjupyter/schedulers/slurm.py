"""SLURM: ``sbatch`` / ``squeue`` / ``sacct`` / ``scancel`` / ``scontrol``.

Everything SLURM-specific is data (directive prefix, commands, state and reason tables) plus
short hooks; each query is a command builder (a method) and a pure parser (a function of the
command's output, tested on recorded output). The job's final state comes from the runner's
exit file; SLURM explains the deaths the runner cannot report (time limit, memory, node
failure). Works with accounting disabled: ``squeue --states=all`` still knows recently
finished jobs, and a job neither command knows is simply absent (the monitor then relies on
the exit file).

Profile options (``scheduler_options``): see :meth:`SlurmScheduler.valid_options` — the
commands (``sbatch`` … paths, ``bin_dir``, ``command_env``), ``accounting`` (``false`` skips
``sacct``) and ``gpu_directive`` (``"gres"``, the default, or ``"gpus"``).
"""

from __future__ import annotations

import re
from typing import ClassVar, Sequence

from ..errors import ClusterError
from ..jobdir import JobPaths
from ..states import JobState
from ..text import dhms, signal_name
from ..sweep import array_ranges
from .base import JobSpec, NativeStatus, QueueEntry, Scheduler

_S = JobState

#: a value in a ``#SBATCH`` line: sbatch splits on blanks and strips double quotes; no shell
#: reads these lines, so the only way out of a directive is a line break (refused).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\"]")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.,:+=@-]")
#: the native state a COMPLETING job ended in, by squeue's reason
_ENDED_BY = {"TimeLimit": "TIMEOUT", "OutOfMemory": "OUT_OF_MEMORY", "NodeFail": "NODE_FAIL"}
#: what slurmstepd and the kernel write when a job exceeds its memory
_OOM = re.compile(r"exceeded (job )?memory limit|oom[- ]kill|out of memory", re.IGNORECASE)
#: squeue's columns for :func:`parse_squeue` and :func:`parse_queue`
STATUS_FORMAT = "%i|%T|%r|%N"
QUEUE_FORMAT = "%i|%u|%T|%r|%M|%P|%N|%j"
SACCT_FORMAT = "JobID,State,ExitCode,Reason,NodeList,Submit"

#: native state word -> JobState
STATES: dict[str, JobState] = {
    "PENDING": _S.PENDING, "CONFIGURING": _S.PENDING, "REQUEUED": _S.PENDING,
    "REQUEUE_HOLD": _S.PENDING, "REQUEUE_FED": _S.PENDING, "RESV_DEL_HOLD": _S.PENDING,
    "RUNNING": _S.RUNNING, "COMPLETING": _S.RUNNING, "SUSPENDED": _S.RUNNING,
    "STOPPED": _S.RUNNING, "SIGNALING": _S.RUNNING, "STAGE_OUT": _S.RUNNING,
    "RESIZING": _S.RUNNING,
    "COMPLETED": _S.COMPLETED,
    "FAILED": _S.FAILED, "NODE_FAIL": _S.FAILED, "BOOT_FAIL": _S.FAILED,
    "SPECIAL_EXIT": _S.FAILED, "PREEMPTED": _S.FAILED,
    "CANCELLED": _S.CANCELLED, "REVOKED": _S.CANCELLED,
    "TIMEOUT": _S.TIMEOUT, "DEADLINE": _S.TIMEOUT,
    "OUT_OF_MEMORY": _S.OUT_OF_MEMORY,
}

#: why a job ended, in plain words, by native state
FINAL_REASONS: dict[str, str] = {
    "TIMEOUT": "reached its time limit (--time)",
    "DEADLINE": "reached its deadline",
    "OUT_OF_MEMORY": "ran out of memory (used more than --mem)",
    "NODE_FAIL": "the node running it failed",
    "BOOT_FAIL": "the node failed to boot",
    "PREEMPTED": "preempted by a job of higher priority",
    "CANCELLED": "cancelled",
    "REVOKED": "revoked (it ran on another cluster of the federation)",
    "FAILED": "failed",
    "SPECIAL_EXIT": "failed (special exit)",
}

#: squeue's reason codes, in plain words
REASONS: dict[str, str] = {
    "None": "",
    "Priority": "waiting for jobs of higher priority",
    "Resources": "waiting for resources (CPUs, memory or nodes) to become free",
    "Dependency": "waiting for a job it depends on",
    "DependencyNeverSatisfied": "a job it depends on failed, so it will never start",
    "BeginTime": "waiting for its start time",
    "JobHeldUser": "held by you (release it to run)",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail": "a node it needs is not available (down, drained or reserved)",
    "NodeDown": "a node it needs is down",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "PartitionNodeLimit": "asks for more nodes than its partition allows",
    "PartitionTimeLimit": "asks for more time than its partition allows",
    "PartitionConfig": "asks for more than its partition allows",
    "Reservation": "waiting for its reservation",
    "Licenses": "waiting for licenses",
    "BadConstraints": "its constraints cannot be satisfied",
    "InvalidAccount": "its account is invalid",
    "InvalidQOS": "its QOS is invalid",
    "Cleaning": "its node is being cleaned up after an earlier job",
    "Prolog": "its prolog is running",
    "launch failed requeued held": "its launch failed; held after requeue",
    "TimeLimit": "reached its time limit (--time)",
    "OutOfMemory": "ran out of memory (used more than --mem)",
    "NodeFail": "the node running it failed",
    "JobLaunchFailure": "its batch step failed or was killed",
}

#: pending reasons that will not clear by waiting: the job must be changed or cancelled
NEVER: frozenset[str] = frozenset({
    "DependencyNeverSatisfied", "PartitionNodeLimit", "PartitionTimeLimit",
    "PartitionConfig", "BadConstraints", "InvalidAccount", "InvalidQOS",
    "AccountNotAllowed", "QOSMaxWallDurationPerJobLimit", "QOSMaxCpuPerJobLimit",
    "QOSMaxNodePerJobLimit", "QOSMaxMemoryPerJob", "AssocMaxWallDurationPerJobLimit",
    "AssocMaxCpuPerJobLimit", "AssocMaxNodesPerJobLimit", "AssocMaxMemPerJob",
})


class SlurmScheduler(Scheduler):
    """``#SBATCH`` scripts; ``sbatch --parsable`` once per job (:meth:`Scheduler.call_once`);
    one ``squeue`` for all active jobs, one ``sacct`` for those squeue calls finished or no
    longer lists; ``scancel``; ``scontrol hold/release``."""

    name = "slurm"
    directive_prefix = "#SBATCH"
    #: ``--parsable`` prints ``id`` or ``id;cluster``
    job_id_regexp = r"(?m)^\s*(?P<job_id>\d+(?:_\d+)?)(?:;\S*)?\s*$"
    poll_interval = 3.0
    operations: ClassVar[dict[str, tuple[str, ...]]] = {
        "submit": ("sbatch", "--parsable"), "status": ("squeue", "--noheader"),
        "accounting": ("sacct", "-X", "-n", "-P"), "cancel": ("scancel",),
        "hold": ("scontrol", "hold"), "release": ("scontrol", "release"),
        "show": ("scontrol", "show", "job", "-o"),
    }
    option_help: ClassVar[dict[str, str]] = {
        "accounting": "false: never ask sacct (a cluster without accounting)",
        "gpu_directive": '"gres" (--gres=gpu:N, the default) or "gpus" (--gpus=N)',
    }
    cancel_gone = r"already completing or completed|Invalid job id"
    state_map = STATES
    final_reasons = FINAL_REASONS
    reasons = REASONS
    never_reasons = NEVER
    array_index = "${SLURM_ARRAY_TASK_ID}"

    # -- the script -------------------------------------------------------------------------
    def directives(self, spec: JobSpec) -> list[str]:
        res = spec.resources
        log = _value(spec.paths.scheduler_log, "the job directory")
        if "%" in log:
            raise ClusterError(f"slurm: the work directory {spec.paths.root!r} contains '%', "
                               "which sbatch would read as a file name pattern")
        if spec.array_prefix:   # each element logs in its own directory (%8a: the index)
            log = JobPaths(spec.paths.root, spec.array_prefix + "%8a").scheduler_log
        out = [f"--job-name={job_name(spec.name)}", f"--output={log}", f"--error={log}"]
        if res.time:
            out.append(f"--time={dhms(res.time)}")
        if res.nodes:
            out.append(f"--nodes={int(res.nodes)}")
        if res.cpus:
            out.append(f"--cpus-per-task={int(res.cpus)}")
        if res.mem:
            out.append(f"--mem={int(res.mem)}M")
        if res.gpus:
            gpus = _value(res.gpus, "gpus")
            style = str(self.options.get("gpu_directive", "gres")).lower()
            out.append(f"--gpus={gpus}" if style == "gpus" else f"--gres=gpu:{gpus}")
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(res, key)
            if value:
                out.append(f"--{key}={_value(value, key)}")
        return out + [_free_directive(d) for d in res.directives]

    # -- commands ---------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> str:
        done = self.call_once(spec.paths.dir, self.argv("submit", spec.paths.script))
        return self.parse_job_id(done.stdout)

    def submit_array(self, spec: JobSpec, indices: Sequence[int], max_running: int) -> str:
        throttle = f"%{int(max_running)}" if max_running else ""
        done = self.call_once(spec.paths.dir, self.argv(
            "submit", f"--array={array_ranges(indices)}{throttle}", spec.paths.script))
        return self.parse_job_id(done.stdout)

    def status_command(self, ids: Sequence[str]) -> list[str]:
        # --array: one line per array element (else pending ones share one line "12_[3-9]")
        arrays = ["--array"] if any("_" in i for i in ids) else []
        return self.argv("status", "--states=all", *arrays, f"--jobs={','.join(ids)}",
                         f"--format={STATUS_FORMAT}")

    def accounting_command(self, ids: Sequence[str]) -> list[str]:
        return self.argv("accounting", f"-j{','.join(ids)}", f"--format={SACCT_FORMAT}")

    def queue_command(self, all_users: bool) -> list[str]:
        return self.argv("status", *([] if all_users else ["--me"]), f"--format={QUEUE_FORMAT}")

    def status(self, native_ids: Sequence[str], job_ids: Sequence[str]) -> dict[str, NativeStatus]:
        if not native_ids:
            return {}
        ids = list(dict.fromkeys(native_ids))
        done = self.call(self.status_command(ids), tolerate="Invalid job id", retry=True)
        out = parse_squeue(done.stdout, ids)
        ask = needs_accounting(out, ids)
        if ask:
            out = merged(out, self._accounting(ask))
        for native_id, status in out.items():
            if status.state in (_S.FAILED, _S.CANCELLED) and status.exit_code in (None, 137):
                self._explain_kill(native_id, status)
        return out

    def _accounting(self, ids: Sequence[str]) -> dict[str, NativeStatus]:
        if self.options.get("accounting", True) is False or getattr(self, "_no_sacct", False):
            return {}
        done = self.call(self.accounting_command(ids), tolerate=True, retry=True)
        if done.returncode != 0:
            if "disabled" in done.stderr.lower() or "not configured" in done.stderr.lower():
                self._no_sacct = True     # accounting is off for good on this cluster
            return {}
        return parse_sacct(done.stdout, ids)

    def _explain_kill(self, native_id: str, status: NativeStatus) -> None:
        """A job killed by SIGKILL: was it SLURM's memory enforcement? Without cgroups
        (``JobAcctGatherParams=OverMemoryKill``) SLURM reports such a job as FAILED and says
        why only in the job's output file, which ``scontrol`` names while it knows the job."""
        done = self.call(self.argv("show", native_id), tolerate=True, retry=True)
        path = stderr_path(done.stdout) if done.returncode == 0 else None
        if not path:
            return
        try:
            text = self.transport.tail(path, 30)
        except Exception:
            return
        if _OOM.search(text):
            status.state = _S.OUT_OF_MEMORY
            status.reason = FINAL_REASONS["OUT_OF_MEMORY"]

    def queue(self, all_users: bool = False) -> list[QueueEntry]:
        return parse_queue(self.call(self.queue_command(all_users), retry=True).stdout)


# -- directive values ---------------------------------------------------------------------------

def job_name(name: str) -> str:
    """A job name sbatch and squeue show as is: letters, digits and ``_.,:+=@-``."""
    return _NAME_UNSAFE.sub("_", name.strip())[:64] or "clusterjupyter"


def _value(value: object, what: str) -> str:
    """A value for a ``#SBATCH`` line: one argument, no line break, no quote."""
    text = str(value).strip()
    if not text or _UNSAFE.search(text):
        raise ClusterError(f"slurm: invalid {what} {value!r}: control characters and "
                           "double quotes are not allowed")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _free_directive(text: str) -> str:
    d = text.strip()
    if d.startswith("#SBATCH"):
        d = d[len("#SBATCH"):].strip()
    if not d.startswith("-") or re.search(r"[\x00-\x1f\x7f]", d):
        raise ClusterError(f"slurm: invalid directive {text!r}: write it as sbatch options "
                           "on one line, e.g. --exclusive or --licenses=matlab:1")
    return d


# -- parsers (pure: text in, statuses out) ------------------------------------------------------

def parse_squeue(text: str, ids: Sequence[str]) -> dict[str, NativeStatus]:
    """``squeue --format=%i|%T|%r|%N`` lines of the jobs ``ids``."""
    out: dict[str, NativeStatus] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4 and parts[0] in ids:
            out[parts[0]] = native_status(parts[1], parts[2], None, parts[3])
    return out


def parse_sacct(text: str, ids: Sequence[str]) -> dict[str, NativeStatus]:
    """``sacct -X -n -P --format=JobID,State,ExitCode,Reason,NodeList,Submit`` lines; a job
    id listed twice (ids are reused by a cluster that started afresh) is the latest one."""
    latest: dict[str, tuple[str, NativeStatus]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 6 or parts[0] not in ids:
            continue
        native_id, word, code, reason, nodes, submitted = parts[:6]
        if native_id in latest and latest[native_id][0] > submitted:
            continue
        latest[native_id] = (submitted, native_status(word, reason, code, nodes))
    return {k: v for k, (_, v) in latest.items()}


def parse_queue(text: str) -> list[QueueEntry]:
    """``squeue --format=%i|%u|%T|%r|%M|%P|%N|%j`` lines (the name may contain ``|``)."""
    out = []
    for line in text.splitlines():
        parts = line.rstrip("\n").split("|", 7)
        if len(parts) < 8:
            continue
        native_id, user, word, reason, elapsed, partition, nodes, name = \
            (p.strip() for p in parts)
        st = native_status(word, reason, None, nodes)
        out.append(QueueEntry(native_id=native_id, name=name, user=user, state=st.state,
                              native=st.native, reason=st.reason or "", elapsed=elapsed,
                              partition=partition, nodes=st.host))
    return out


def stderr_path(text: str) -> str | None:
    """The ``StdErr=`` path of ``scontrol show job -o`` output."""
    m = re.search(r"\bStdErr=(.+?)(?= [A-Za-z]+=|$)", text.strip())
    return m.group(1) if m else None


def needs_accounting(squeue: dict[str, NativeStatus], ids: Sequence[str]) -> list[str]:
    """The jobs squeue calls finished (or finishing) or no longer lists: sacct says how."""
    return [i for i in ids if i not in squeue or squeue[i].state.final
            or squeue[i].native.startswith("COMPLETING")]


def merged(squeue: dict[str, NativeStatus],
           sacct: dict[str, NativeStatus]) -> dict[str, NativeStatus]:
    """squeue's view, with accounting's final word for jobs that ended."""
    out = dict(squeue)
    for native_id, status in sacct.items():
        seen = out.get(native_id)
        if seen is not None and not status.state.final:
            continue
        if seen is not None and not status.host:
            status.host = seen.host
        out[native_id] = status
    return out


def native_status(word: str, reason: str, exit_code: str | None, nodes: str) -> NativeStatus:
    """One job as SLURM describes it (state word, reason code, ``N:M`` exit code, nodes)."""
    word, reason = word.strip(), reason.strip()
    base = word.split()[0].rstrip("+") if word else ""
    state = map_state(word)
    ended = base
    if base == "COMPLETING" and reason in _ENDED_BY:
        # its processes are being cleaned up; the reason says why it ended
        ended = _ENDED_BY[reason]
        state = map_state(ended)
    code, signum = exit_code_signal(exit_code)
    if state.final:
        text = _final_words(state, base, ended, word, reason, code, signum)
    else:
        text = REASONS.get(reason, reason) if state is _S.PENDING else ""
        if base in ("SUSPENDED", "STOPPED"):
            text = base.lower()
    host = nodes.strip() if nodes.strip() not in ("", "None assigned", "(null)") else ""
    return NativeStatus(state=state, reason=text,
                        exit_code=(128 + signum) if signum else code,
                        native=base, host=host,
                        never=state is _S.PENDING and reason in NEVER)


def map_state(native: str) -> JobState:
    word = native.strip().split()[0].rstrip("+") if native.strip() else ""
    return STATES.get(word.upper(), _S.LOST if not word else _S.RUNNING)


def _final_words(state: JobState, base: str, ended: str, word: str, reason: str,
                 code: int | None, signum: int) -> str:
    words = FINAL_REASONS.get(ended, "") if state is not _S.COMPLETED else ""
    if base == "CANCELLED" and " by " in word:
        words = f"cancelled by {_who(word.split(' by ', 1)[1])}"
    if state is not _S.COMPLETED and reason and reason != "None" \
            and reason not in ("TimeLimit", "OutOfMemory"):
        said = REASONS.get(reason, reason)
        words = f"{words} ({said})" if words else said
    if signum:
        how = f"killed by {signal_name(signum)}"
        words = f"{words}; {how}" if words else how
    elif code and state is not _S.COMPLETED:
        words = f"{words}; exit code {code}" if words else f"exit code {code}"
    return words


def exit_code_signal(text: str | None) -> tuple[int | None, int]:
    """``"N:M"`` (exit code, signal) -> (N, M); (None, 0) when unknown."""
    if not text:
        return None, 0
    m = re.fullmatch(r"\s*(\d+)(?::(\d+))?\s*", text)
    if not m:
        return None, 0
    code, signum = int(m.group(1)), int(m.group(2) or 0)
    if signum > 64:       # not a signal: SLURM's marker (0:125 for out of memory)
        return None, 0
    return code, signum


def _who(uid: str) -> str:
    uid = uid.strip()
    if uid == "0":
        return "root"
    return f"uid {uid}" if uid.isdigit() else uid
