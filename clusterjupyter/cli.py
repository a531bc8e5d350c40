"""``clusterjupyter``: the jobs and profiles of this user, from a terminal.

Same library calls as the magics, the panel and the server (:mod:`clusterjupyter.api`, the
journal, the backends), so a job submitted from any kernel shows here, and what is done here
(cancel) shows there. Every listing takes ``--json``.

Exit codes (for scripts): 0 done; 1 the job did not complete (``status``, ``result``, ``logs``
of a failed job) or a check failed; 2 bad usage; 3 no such job or profile; 4 the cluster could
not be reached or refused the command. ``env sync`` whose build fails: 1; ``env log`` with no
environment built: 3.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
import types
from typing import Any, Callable, Sequence

from . import api
from .errors import ClusterError, JobFailedError, ProfileError
from .failure import empty_log, error_of, format_error, listed_reason
from .jobs import job_json
from .journal import JobRecord, format_seconds
from .states import JobState

OK, NOT_OK, USAGE, NOT_FOUND, CLUSTER = 0, 1, 2, 3, 4


class Exit(Exception):
    """Leave with ``code`` after printing ``message`` on stderr."""

    def __init__(self, code: int, message: str = ""):
        self.code = code
        super().__init__(message)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=str))


def _job(ref: str) -> JobRecord:
    try:
        return api.get_job(ref)
    except KeyError as e:
        raise Exit(NOT_FOUND, str(e).strip("'\"")) from None


def _refresh(recs: list[JobRecord]) -> list[JobRecord]:
    def say(profile: str, e: Exception) -> None:
        print(f"clusterjupyter: cannot refresh jobs of {profile}: {e}", file=sys.stderr)

    api.refresh_jobs(recs, on_error=say)
    return [api.journal().get(r.id) or r for r in recs]


# -- commands ---------------------------------------------------------------------------------
def cmd_jobs(a: argparse.Namespace) -> int:
    states = tuple(s for s in (a.state or "").split(",") if s) or None
    if a.active:
        states = ("pending", "running")
    try:
        recs = api.list_jobs(states, a.profile, a.limit)
    except ValueError as e:
        raise Exit(USAGE, str(e)) from None
    recs = _refresh(recs)
    if a.json:
        _print_json({"jobs": [job_json(r) for r in recs]})
        return OK
    if not recs:
        print("no jobs in the journal" + (f" for profile {a.profile}" if a.profile else ""))
        return OK
    print(f"{'ID':<9} {'NAME':<20} {'PROFILE':<10} {'NATIVE':<9} {'STATE':<13} {'SUBMITTED':<16} "
          f"{'ELAPSED':>8}  REASON")
    for r in recs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.submitted))
        why = listed_reason(r)
        print(f"{r.id[:8]:<9} {r.name[:20]:<20} {r.profile[:10]:<10} "
              f"{(r.native_id or '-')[:9]:<9} {r.state.value:<13} {when:<16} "
              f"{format_seconds(r.elapsed):>8}  {why[:70]}")
    return OK


def cmd_status(a: argparse.Namespace) -> int:
    rec = _refresh([_job(a.job)])[0]
    err = _error(rec)
    if a.json:
        d = job_json(rec, full=True)
        d["error"] = err
        _print_json(d)
    else:
        native = f" #{rec.native_id}" if rec.native_id else ""
        print(f"job {rec.id} {rec.name!r} on {rec.profile}{native}: {rec.state.value}")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.submitted))
        print(f"submitted {when}; elapsed {format_seconds(rec.elapsed)}"
              + (f"; host {rec.host}" if rec.host else "")
              + (f"; notebook {rec.notebook}" if rec.notebook else ""))
        if rec.state.final and not rec.state.ok:
            print(format_error(rec, err))
        elif rec.reason:
            print(rec.reason)
    return OK if not rec.state.final or rec.state.ok else NOT_OK


def _error(rec: JobRecord) -> dict[str, Any]:
    if not rec.state.final or rec.state.ok:
        return {}
    from .backends import backend_for_record

    try:
        return error_of(rec, backend_for_record(rec))
    except ProfileError:
        return rec.error or {"state": rec.state.value, "reason": rec.reason}


def cmd_logs(a: argparse.Namespace) -> int:
    rec = _job(a.job)
    if not a.follow:
        text = _logs(rec, a.stream, a.tail)
        print(text or empty_log(a.stream, rec.state.final), end="" if text else "\n")
    else:
        from .backends import backend_for_record

        backend = backend_for_record(rec)
        path = {"stdout": "stdout", "stderr": "stderr", "scheduler": "scheduler_log"}[a.stream]
        file = getattr(backend.paths(rec), path)
        offset = 0
        if a.tail:
            text = _logs(rec, a.stream, a.tail)
            sys.stdout.write(text)
            offset = len(backend.transport.read_from(file, 0))
        while True:
            chunk = backend.transport.read_from(file, offset)
            if chunk:
                offset += len(chunk)
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            elif rec.state.final:
                break
            else:
                time.sleep(a.interval)
                rec = _refresh([rec])[0]
    err = _error(rec)
    if err:
        print("\n" + format_error(rec, err, logs=False), file=sys.stderr)
        return NOT_OK
    return OK


def _logs(rec: JobRecord, stream: str, tail: int | None) -> str:
    return api.job_logs(rec.id, stream, tail)


def cmd_cancel(a: argparse.Namespace) -> int:
    rec = _job(a.job)
    if rec.state.final:
        print(f"job {rec.id[:8]} already ended: {rec.state.value}")
        return OK
    rec = api.cancel_job(rec.id)
    if a.wait:
        from .jobs import Job

        Job(rec).wait(a.wait)
        rec = api.journal().get(rec.id) or rec
    print(f"job {rec.id[:8]} on {rec.profile}: "
          + (rec.state.value if rec.state.final else "cancel requested"))
    return OK


def cmd_result(a: argparse.Namespace) -> int:
    from .jobs import Job

    rec = _refresh([_job(a.job)])[0]
    job = Job(rec)
    namespace: dict[str, Any] = {}
    main = types.ModuleType("__main__")
    main.__dict__.update(namespace)
    try:
        res = job.load(main.__dict__, main, timeout=a.timeout)
    except JobFailedError as e:
        raise Exit(NOT_OK, str(e)) from None
    except TimeoutError as e:
        raise Exit(NOT_OK, str(e)) from None
    values = {k: v for k, v in res.values.items() if not isinstance(v, types.ModuleType)}
    if a.names:
        wanted = [n.strip() for n in a.names.split(",") if n.strip()]
        missing = [n for n in wanted if n not in values and n != "_"]
        if missing:
            raise Exit(USAGE, f"job {rec.id[:8]} did not send back {', '.join(missing)}; it "
                              f"sent: {', '.join(values) or 'no names'}")
        values = {n: values[n] for n in wanted if n in values}
    if res.has_value and (not a.names or "_" in a.names.split(",")):
        values["_"] = res.value
    fmt = a.format or ("json" if a.to.endswith(".json") else "pickle")
    if fmt == "json":
        bad = []
        for name, value in values.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                bad.append(f"{name} ({type(value).__name__})")
        if bad:
            raise Exit(USAGE, f"not JSON: {', '.join(bad)}; use --format pickle, or --names to "
                              "choose the names to write")
        data = json.dumps(values, indent=1).encode()
    else:
        data = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
    if a.to == "-":
        sys.stdout.buffer.write(data)
    else:
        with open(a.to, "wb") as f:
            f.write(data)
        print(f"wrote {', '.join(values) or 'no names'} of job {rec.id[:8]} to {a.to} ({fmt})",
              file=sys.stderr)
    if res.exception is not None:
        print(f"the cell raised {type(res.exception).__name__}: {res.exception}", file=sys.stderr)
        return NOT_OK
    return OK


def cmd_profiles(a: argparse.Namespace) -> int:
    profiles = api.list_profiles()
    if a.json:
        _print_json({"profiles": profiles})
        return OK
    for p in profiles:
        mark = "*" if p.get("default") else " "
        host = p.get("host") or ""
        where = (f"{p['user']}@" if p.get("user") else "") + host if host else "this machine"
        print(f"{mark} {p['name']:<14} {p.get('scheduler', ''):<10} {where}"
              + (f"  {p['description']}" if p.get("description") else ""))
    return OK


def cmd_check(a: argparse.Namespace) -> int:
    from .widgets.health import check_profile

    answer = check_profile(a.profile, timeout=a.timeout)
    if a.json:
        _print_json(answer)
    else:
        for step in answer.get("steps", []):
            mark = "ok  " if step["ok"] else "FAIL"
            print(f"{mark} {step['name']:<10} {step['seconds']:6.2f}s  {step['detail']}")
        if answer.get("environment", {}).get("table"):
            print(answer["environment"]["table"])
        print(answer.get("message", ""))
    if answer.get("ok"):
        return OK
    if not answer.get("steps"):
        return NOT_FOUND
    return NOT_OK


def cmd_queue(a: argparse.Namespace) -> int:
    from .backends import backend_for

    from .jobs import queue

    backend = backend_for(a.profile)
    listed = queue(backend, a.all_users)
    if a.json:
        _print_json({"profile": backend.name, "queue": [
            {"native_id": q.native_id, "name": r.name if r else q.name, "user": q.user,
             "state": q.state.value, "elapsed": q.elapsed, "reason": q.reason,
             "partition": q.partition, "job": r.id if r else None} for q, r in listed]})
        return OK
    if not listed:
        print(f"the queue of {backend.name} is empty")
        return OK
    print(f"{'JOBID':<10} {'NAME':<20} {'USER':<10} {'STATE':<10} {'TIME':>10}  REASON")
    for q, r in listed:
        name = r.name if r else q.name
        print(f"{q.native_id:<10} {name[:20]:<20} {q.user[:10]:<10} {q.state.value:<10} "
              f"{q.elapsed:>10}  {q.reason}")
    return OK


def cmd_env(a: argparse.Namespace) -> int:
    from . import envsync
    from .backends import backend_for

    if a.json and a.action != "list":
        raise Exit(USAGE, "--json is for `env list`")
    if a.action == "sync" and not (a.packages or a.all):
        raise Exit(USAGE, "from a terminal there are no cells to learn the packages from: name "
                          "them (--packages numpy,pandas) or take this Python's whole "
                          "environment (--all)")
    backend = backend_for(a.profile)
    if a.json:
        _print_json({"profile": backend.name, "where": backend.transport.where,
                     "environments": envsync.list_envs(backend)})
        return OK
    packages = [p for p in (a.packages or "").split(",") if p] or None
    try:
        envsync.command(backend, a.action, packages, a.all, lambda line: print(line, flush=True))
    except envsync.NoEnvironment as e:
        raise Exit(NOT_FOUND, str(e)) from None
    except envsync.BuildError as e:
        raise Exit(NOT_OK, str(e)) from None
    return OK


# -- parser -----------------------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clusterjupyter", description="Jobs and profiles of clusterjupyter (the journal "
        "shared with every kernel).", epilog="exit codes: 0 ok, 1 job not completed / check "
        "failed, 2 bad usage, 3 unknown job or profile, 4 cluster unreachable or refused")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str,
            listing: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if listing:
            sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    sp = add("jobs", cmd_jobs, "list jobs, newest first (all kernels)", listing=True)
    sp.add_argument("--state", help="only these states, comma-separated: "
                    + ", ".join(s.value for s in JobState))
    sp.add_argument("--active", action="store_true", help="only pending or running jobs")
    sp.add_argument("--profile", help="only jobs of this profile")
    sp.add_argument("--limit", type=_positive, default=50, help="at most N jobs (default 50)")
    sp = add("status", cmd_status, "one job, with why it failed", listing=True)
    sp.add_argument("job", help="job id (or a prefix of 4+ characters), name or native id")
    sp = add("logs", cmd_logs, "a job's stdout, stderr or scheduler log")
    sp.add_argument("job")
    sp.add_argument("--stream", "-s", choices=api.LOG_STREAMS, default="stdout")
    sp.add_argument("--tail", "-n", type=_positive, help="only the last N lines")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    sp.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    sp = add("cancel", cmd_cancel, "cancel a job")
    sp.add_argument("job")
    sp.add_argument("--wait", type=float, default=30.0,
                    help="seconds to wait for the job to end (default 30; 0: do not wait)")
    sp = add("result", cmd_result, "write a finished job's values to a file")
    sp.add_argument("job")
    sp.add_argument("--to", required=True, metavar="FILE", help="output file ('-': stdout)")
    sp.add_argument("--format", choices=("pickle", "json"),
                    help="pickle (default) or json (default for a .json file)")
    sp.add_argument("--names", help="only these names, comma-separated ('_': the cell's value)")
    sp.add_argument("--timeout", type=float, default=None,
                    help="wait at most this many seconds for a running job")
    add("profiles", cmd_profiles, "list cluster profiles (* the default)", listing=True)
    sp = add("check", cmd_check, "check that jobs can run on a profile (nothing is submitted)",
             listing=True)
    sp.add_argument("profile", nargs="?", default=None)
    sp.add_argument("--timeout", type=float, default=60.0)
    sp = add("queue", cmd_queue, "the scheduler's queue of a profile", listing=True)
    sp.add_argument("profile", nargs="?", default=None)
    sp.add_argument("--all-users", action="store_true", help="every user's jobs")
    from .envsync import ACTIONS

    sp = add("env", cmd_env, "environments matching this Python's, built on a profile's cluster: "
             "sync builds (or finds) one, list, log (its build log), prune (those no profile "
             "uses), off (back to the profile's python)", listing=True)
    sp.add_argument("action", choices=ACTIONS)
    sp.add_argument("profile", nargs="?", default=None)
    sp.add_argument("--packages", metavar="A,B", help="sync: these distributions of this Python "
                    "(with their versions here)")
    sp.add_argument("--all", action="store_true", help="sync: this Python's whole environment")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except Exit as e:
        if str(e):
            print(f"clusterjupyter: {e}", file=sys.stderr)
        return e.code
    except ProfileError as e:
        print(f"clusterjupyter: {e}", file=sys.stderr)
        return NOT_FOUND
    except ClusterError as e:
        print(f"clusterjupyter: {e}", file=sys.stderr)
        return CLUSTER
    except KeyError as e:
        print(f"clusterjupyter: {str(e).strip(chr(39) + chr(34))}", file=sys.stderr)
        return NOT_FOUND
    except ValueError as e:
        print(f"clusterjupyter: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return OK


if __name__ == "__main__":
    sys.exit(main())
