"""SLURM: ``sbatch`` / ``squeue`` / ``sacct`` / ``scancel`` / ``scontrol``.

Everything SLURM-specific is data (directive prefix, state and reason tables, commands) plus
short hooks. The job's final state comes from the runner's exit file; SLURM explains the deaths
the runner cannot report (time limit, memory, node failure). Works with accounting disabled:
``squeue --states=all`` still knows recently finished jobs, and a job neither command knows is
simply absent (the monitor then relies on the exit file).

Profile options (``scheduler_options``): ``sbatch``, ``squeue``, ``sacct``, ``scancel``,
``scontrol`` (command paths), ``accounting`` (``false`` skips ``sacct``),
``gpu_directive`` (``"gres"``, the default, or ``"gpus"``).
"""

from __future__ import annotations

import re
import signal
from typing import ClassVar, Sequence

from ..errors import ClusterError, CommandError
from ..resources import format_time
from ..states import JobState
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


class SlurmScheduler(Scheduler):
    """``#SBATCH`` scripts; ``sbatch --parsable`` once per job (:meth:`Scheduler.call_once`);
    one ``squeue`` for all active jobs, one ``sacct`` for those squeue calls finished or no
    longer lists; ``scancel``; ``scontrol hold/release``."""

    name = "slurm"
    directive_prefix = "#SBATCH"
    #: ``--parsable`` prints ``id`` or ``id;cluster``
    job_id_regexp = r"(?m)^\s*(?P<job_id>\d+(?:_\d+)?)(?:;\S*)?\s*$"
    poll_interval = 3.0

    state_map: ClassVar[dict[str, JobState]] = {
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
    final_reasons: ClassVar[dict[str, str]] = {
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
    reasons: ClassVar[dict[str, str]] = {
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
    never_reasons: ClassVar[frozenset[str]] = frozenset({
        "DependencyNeverSatisfied", "PartitionNodeLimit", "PartitionTimeLimit",
        "PartitionConfig", "BadConstraints", "InvalidAccount", "InvalidQOS",
        "AccountNotAllowed", "QOSMaxWallDurationPerJobLimit", "QOSMaxCpuPerJobLimit",
        "QOSMaxNodePerJobLimit", "QOSMaxMemoryPerJob", "AssocMaxWallDurationPerJobLimit",
        "AssocMaxCpuPerJobLimit", "AssocMaxNodesPerJobLimit", "AssocMaxMemPerJob",
    })

    # -- the script -------------------------------------------------------------------------
    def directives(self, spec: JobSpec) -> list[str]:
        res = spec.resources
        log = self._value(spec.paths.scheduler_log, "the job directory")
        if "%" in log:
            raise ClusterError(f"slurm: the work directory {spec.paths.root!r} contains '%', "
                               "which sbatch would read as a file name pattern")
        out = [f"--job-name={job_name(spec.name)}", f"--output={log}", f"--error={log}"]
        if res.time:
            out.append(f"--time={format_time(res.time)}")
        if res.nodes:
            out.append(f"--nodes={int(res.nodes)}")
        if res.cpus:
            out.append(f"--cpus-per-task={int(res.cpus)}")
        if res.mem:
            out.append(f"--mem={int(res.mem)}M")
        if res.gpus:
            gpus = self._value(res.gpus, "gpus")
            style = str(self.options.get("gpu_directive", "gres")).lower()
            out.append(f"--gpus={gpus}" if style == "gpus" else f"--gres=gpu:{gpus}")
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(res, key)
            if value:
                out.append(f"--{key}={self._value(value, key)}")
        for d in res.directives:
            out.append(self._free_directive(d))
        return out

    @staticmethod
    def _value(value: object, what: str) -> str:
        """A value for a ``#SBATCH`` line: one argument, no line break, no quote."""
        text = str(value).strip()
        if not text or _UNSAFE.search(text):
            raise ClusterError(f"slurm: invalid {what} {value!r}: control characters and "
                               "double quotes are not allowed")
        return f'"{text}"' if any(c.isspace() for c in text) else text

    @staticmethod
    def _free_directive(text: str) -> str:
        d = text.strip()
        if d.startswith("#SBATCH"):
            d = d[len("#SBATCH"):].strip()
        if not d.startswith("-") or re.search(r"[\x00-\x1f\x7f]", d):
            raise ClusterError(f"slurm: invalid directive {text!r}: write it as sbatch options "
                               "on one line, e.g. --exclusive or --licenses=matlab:1")
        return d

    # -- commands ---------------------------------------------------------------------------
    def _cmd(self, name: str) -> str:
        return str(self.options.get(name, name))

    def submit(self, spec: JobSpec) -> str:
        done = self.call_once(spec.paths.dir, [self._cmd("sbatch"), "--parsable",
                                               spec.paths.script])
        return self.parse_job_id(done.stdout)

    def status(self, native_ids: Sequence[str], job_ids: Sequence[str]) -> dict[str, NativeStatus]:
        if not native_ids:
            return {}
        ids = list(dict.fromkeys(native_ids))
        out: dict[str, NativeStatus] = {}
        done = self.call([self._cmd("squeue"), "--noheader", "--states=all",
                          f"--jobs={','.join(ids)}", "--format=%i|%T|%r|%N"],
                         check=False, retry=True)
        if done.returncode != 0 and "Invalid job id" not in done.stderr:
            raise CommandError(done.argv, done.returncode, done.stdout, done.stderr,
                               self.transport.where)
        for line in done.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 4 or parts[0] not in ids:
                continue
            native_id, word, reason, nodes = parts[0], parts[1], parts[2], parts[3]
            out[native_id] = self._native(word, reason, None, nodes)
        # finished, finishing or forgotten jobs: accounting knows how they ended
        ask = [i for i in ids if i not in out or out[i].state.final
               or out[i].native.startswith("COMPLETING")]
        if ask:
            for native_id, status in self._accounting(ask).items():
                squeue = out.get(native_id)
                if squeue is not None and not status.state.final:
                    continue
                if squeue is not None and not status.host:
                    status.host = squeue.host
                out[native_id] = status
        for native_id, status in out.items():
            if status.state in (_S.FAILED, _S.CANCELLED) and status.exit_code in (None, 137):
                self._explain_kill(native_id, status)
        return out

    def _explain_kill(self, native_id: str, status: NativeStatus) -> None:
        """A job killed by SIGKILL: was it SLURM's memory enforcement? Without cgroups
        (``JobAcctGatherParams=OverMemoryKill``) SLURM reports such a job as FAILED and says
        why only in the job's output file, which ``scontrol`` names while it knows the job."""
        done = self.call([self._cmd("scontrol"), "show", "job", "-o", native_id],
                         check=False, retry=True)
        m = re.search(r"\bStdErr=(.+?)(?= [A-Za-z]+=|$)", done.stdout.strip())
        if done.returncode != 0 or not m:
            return
        try:
            text = self.transport.tail(m.group(1), 30)
        except Exception:
            return
        if _OOM.search(text):
            status.state = _S.OUT_OF_MEMORY
            status.reason = self.final_reasons["OUT_OF_MEMORY"]

    def _accounting(self, ids: Sequence[str]) -> dict[str, NativeStatus]:
        if self.options.get("accounting", True) is False or getattr(self, "_no_sacct", False):
            return {}
        done = self.call([self._cmd("sacct"), "-X", "-n", "-P", f"-j{','.join(ids)}",
                          "--format=JobID,State,ExitCode,Reason,NodeList,Submit"],
                         check=False, retry=True)
        if done.returncode != 0:
            if "disabled" in done.stderr.lower() or "not configured" in done.stderr.lower():
                self._no_sacct = True     # accounting is off for good on this cluster
            return {}
        latest: dict[str, tuple[str, NativeStatus]] = {}
        for line in done.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 6 or parts[0] not in ids:
                continue
            native_id, word, code, reason, nodes, submitted = parts[:6]
            # job ids can be reused (a cluster that started afresh): the latest one is ours
            if native_id in latest and latest[native_id][0] > submitted:
                continue
            latest[native_id] = (submitted, self._native(word, reason, code, nodes))
        return {k: v for k, (_, v) in latest.items()}

    def _native(self, word: str, reason: str, exit_code: str | None, nodes: str) -> NativeStatus:
        word = word.strip()
        base = word.split()[0].rstrip("+") if word else ""
        state = self.map_state(word)
        reason = reason.strip()
        ended = base
        if base == "COMPLETING" and reason in _ENDED_BY:
            # its processes are being cleaned up; the reason says why it ended
            ended = _ENDED_BY[reason]
            state = self.map_state(ended)
        code, signum = _exit_code(exit_code)
        if state.final:
            words = self.final_reasons.get(ended, "") if state is not _S.COMPLETED else ""
            if base == "CANCELLED" and " by " in word:
                words = f"cancelled by {_who(word.split(' by ', 1)[1])}"
            if state is not _S.COMPLETED and reason and reason != "None" \
                    and reason not in ("TimeLimit", "OutOfMemory"):
                words = f"{words} ({self.reasons.get(reason, reason)})" if words \
                    else self.reasons.get(reason, reason)
            if signum:
                try:
                    name = signal.Signals(signum).name
                except ValueError:
                    name = f"signal {signum}"
                words = f"{words}; killed by {name}" if words else f"killed by {name}"
            elif code and state is not _S.COMPLETED:
                words = f"{words}; exit code {code}" if words else f"exit code {code}"
            text = words
        else:
            text = self.reasons.get(reason, reason) if state is _S.PENDING else ""
            if base in ("SUSPENDED", "STOPPED"):
                text = base.lower()
        host = nodes.strip() if nodes.strip() not in ("", "None assigned", "(null)") else ""
        return NativeStatus(state=state, reason=text,
                            exit_code=(128 + signum) if signum else code,
                            native=base, host=host,
                            never=state is _S.PENDING and reason in self.never_reasons)

    def cancel(self, native_ids: Sequence[str]) -> None:
        if not native_ids:
            return
        done = self.call([self._cmd("scancel"), *native_ids], check=False, retry=True)
        if done.returncode != 0 and not re.search(
                r"already completing or completed|Invalid job id", done.stderr):
            raise CommandError(done.argv, done.returncode, done.stdout, done.stderr,
                               self.transport.where)

    def queue(self, all_users: bool = False) -> list[QueueEntry]:
        who = [] if all_users else ["--me"]
        done = self.call([self._cmd("squeue"), "--noheader", *who,
                          "--format=%i|%u|%T|%r|%M|%P|%N|%j"], retry=True)
        out = []
        for line in done.stdout.splitlines():
            parts = line.rstrip("\n").split("|", 7)
            if len(parts) < 8:
                continue
            native_id, user, word, reason, elapsed, partition, nodes, name = \
                (p.strip() for p in parts)
            st = self._native(word, reason, None, nodes)
            out.append(QueueEntry(native_id=native_id, name=name, user=user, state=st.state,
                                  native=st.native, reason=st.reason or "", elapsed=elapsed,
                                  partition=partition, nodes=st.host))
        return out

    def hold(self, native_id: str) -> None:
        self.call([self._cmd("scontrol"), "hold", native_id], retry=True)

    def release(self, native_id: str) -> None:
        self.call([self._cmd("scontrol"), "release", native_id], retry=True)


def job_name(name: str) -> str:
    """A job name sbatch and squeue show as is: letters, digits and ``_.,:+=@-``."""
    return _NAME_UNSAFE.sub("_", name.strip())[:64] or "clusterjupyter"


def _exit_code(text: str | None) -> tuple[int | None, int]:
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
