"""The built-in local scheduler: the runner as a detached process on the transport's machine.

With the local transport this is "run on my own machine"; with the SSH transport it is "run on
that host directly" (a profile with no batch scheduler). It goes through the same job directory,
runner and exit file as every batch scheduler.
"""

from __future__ import annotations

import shlex
from typing import Sequence

from ..states import JobState
from ..text import signal_name
from .base import JobSpec, NativeStatus, QueueEntry, Scheduler


def _exit_status(code: int) -> NativeStatus:
    """What the exit status of a job process this kernel started says."""
    if code == 0:
        return NativeStatus(JobState.COMPLETED, exit_code=0, native="exited")
    if code < 0:
        return NativeStatus(JobState.FAILED, f"killed by signal {-code} ({signal_name(-code)})",
                            code,
                            native="killed")
    if code == 124:
        return NativeStatus(JobState.TIMEOUT, "time limit reached", code, native="timeout")
    if code > 128:
        return NativeStatus(JobState.FAILED, f"killed by signal {code - 128}", code,
                            native="killed")
    return NativeStatus(JobState.FAILED, f"exited with code {code}", code, native="exited")


#: runs a job array's elements (``sh SCRIPT INDEX``) at most ``$1`` at a time
_ARRAY = 'm=$1; s=$2; shift 2; printf "%s\\n" "$@" | xargs -P "$m" -n 1 sh "$s"'


class LocalScheduler(Scheduler):
    """Detached processes; a sweep's elements run under one ``xargs -P`` (their native ids
    are ``PID_INDEX`` with the pid of that process)."""

    name = "local"
    poll_interval = 1.0
    array_index = "${1}"

    def directives(self, spec: JobSpec) -> list[str]:
        return []

    def wrap(self, spec: JobSpec) -> str:
        res = spec.resources
        words = []
        if res.mem:
            # a process that asks for more than --mem gets a MemoryError (reported as OOM)
            words.append(f"sh -c 'ulimit -v {int(res.mem) * 1024} && exec \"$@\"' sh ")
        if res.time:
            # SIGXCPU, the time-limit signal: the runner itself reports a timeout, so every
            # process reading the journal agrees (only this kernel could see timeout's 124)
            words.append(f"timeout --signal=XCPU --kill-after=10 {int(res.time)} ")
        return "".join(words)

    def submit(self, spec: JobSpec) -> str:
        return self.transport.spawn(["sh", spec.paths.script], spec.paths.scheduler_log)

    def submit_array(self, spec: JobSpec, indices: Sequence[int], max_running: int) -> str:
        return self.transport.spawn(["sh", "-c", _ARRAY, "sh", str(max(1, int(max_running))),
                                     spec.paths.script, *map(str, indices)],
                                    spec.paths.scheduler_log)

    def array_of(self, native_id: str) -> str:
        return native_id.split("_")[0]

    def status(self, native_ids: Sequence[str], job_ids: Sequence[str]) -> dict[str, NativeStatus]:
        if not native_ids:
            return {}
        pids = dict.fromkeys(n.split("_")[0] for n in native_ids)
        done = self.call(["ps", "-ww", "-o", "pid=", "-o", "args=", "-p", ",".join(pids)],
                         tolerate=True, retry=True)
        alive = {}
        for line in done.stdout.splitlines():
            pid, _, args = line.strip().partition(" ")
            alive[pid] = args
        exited = getattr(self.transport, "exited", {})
        out = {}
        for native_id, job_id in zip(native_ids, job_ids, strict=True):
            pid = native_id.split("_")[0]
            # the pid must still be our job's process (pids are reused); an array element's
            # process is its array's, whose script path holds the elements' id prefix
            mine = job_id if pid == native_id else job_id[:24]
            if pid in alive and mine in alive[pid]:
                out[native_id] = NativeStatus(JobState.RUNNING, native="running")
            elif pid in exited:
                out[native_id] = _exit_status(exited[pid])
        return out

    def cancel(self, native_ids: Sequence[str]) -> None:
        # the job runs in its own session: signal the whole process group
        for pid in dict.fromkeys(n.split("_")[0] for n in native_ids):
            self.transport.shell(
                'kill -TERM -- "-$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null; '
                '(sleep 10; kill -KILL -- "-$1" 2>/dev/null) >/dev/null 2>&1 &',
                pid, check=False)

    def queue(self, all_users: bool = False) -> list[QueueEntry]:
        done = self.call(["ps", "-ww", "-eo", "pid=,etime=,user=,args="], tolerate=True,
                         retry=True)
        out = []
        for line in done.stdout.splitlines():
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[3].split()[0].rsplit("/", 1)[-1].startswith("python") \
                    and "clusterjupyter.runner" in parts[3]:
                job_dir = shlex.split(parts[3])[-1] if parts[3] else ""
                out.append(QueueEntry(native_id=parts[0], name=job_dir.rsplit("/", 1)[-1][:8],
                                      user=parts[2], state=JobState.RUNNING, native="running",
                                      elapsed=parts[1]))
        return out
