"""REST handlers of the server extension.

Every verb requires Jupyter's authentication; ``POST`` is also covered by Jupyter's XSRF check
(``APIHandler``). Library calls run in a worker thread, because the journal may wait on a lock and
logs and cancel may go over SSH; the server's event loop never blocks on them.

Errors are JSON bodies ``{"message": ..., "reason": ...}`` (Jupyter's ``APIHandler`` format):
404 for an unknown job, 400 for a bad parameter (the message lists the valid values), 409 when the
job's profile no longer exists, 502 when the cluster could not be reached or refused the command.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Callable, TypeVar, cast

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .. import api
from ..errors import AmbiguousJobError, ClusterError, ProfileError
from ..jobs import job_json
from ..journal import JobRecord
from ..states import JobState

T = TypeVar("T")

DEFAULT_LIMIT = 200
MAX_LIMIT = 10000
DEFAULT_TAIL = 200
MAX_TAIL = 100000


def _error(status: int, message: str) -> web.HTTPError:
    # the message travels as an argument so that a "%" in it is never read as a format
    return web.HTTPError(status, "%s", message)


class _Handler(APIHandler):
    """Shared helpers: run library calls off the event loop, parse parameters, reply JSON."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.args:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": cast(str, exc.log_message) % exc.args,
                                    "reason": exc.reason}))
        else:
            super().write_error(status_code, **kwargs)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except ProfileError as exc:
            raise _error(409, str(exc)) from exc
        except ClusterError as exc:
            raise _error(502, str(exc)) from exc

    async def _job(self, ref: str) -> JobRecord:
        try:
            return await asyncio.to_thread(api.get_job, ref)
        except AmbiguousJobError as exc:
            raise _error(400, str(exc)) from None
        except KeyError:
            raise _error(404, f"no job {ref!r}") from None

    def _int_arg(self, name: str, default: int, low: int, high: int) -> int:
        text = self.get_argument(name, "")
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise _error(400, f"{name} must be an integer between {low} and {high}, got {text!r}")
        return value

    def _reply(self, data: dict[str, Any]) -> None:
        self.finish(json.dumps(data))


class JobsHandler(_Handler):
    @web.authenticated
    async def get(self) -> None:
        states: list[str] = []
        for value in self.get_arguments("state"):
            states.extend(s for s in value.split(",") if s.strip())
        try:
            parsed = tuple(JobState.parse(s).value for s in states)
        except ValueError as exc:
            raise _error(400, str(exc)) from None
        profile = self.get_argument("profile", "") or None
        limit = self._int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        await self._run(api.refresh_active)  # jobs whose kernel is gone still move on
        jobs, sweeps = await self._run(api.list_rows, parsed or None, profile, limit)
        paths = await self._notebook_paths(jobs)
        # a listing carries a preview of each cell, not its source (that comes with one job);
        # a sweep's element names its sweep (the sidebar shows a sweep as one row)
        self._reply({"now": time.time(), "jobs": [
            {**job_json(job), "notebook_path": paths.get(job.id, ""),
             **({"sweep": sweeps[job.id]} if job.id in sweeps else {})} for job in jobs]})

    async def _notebook_paths(self, jobs: list[JobRecord]) -> dict[str, str]:
        """Each job's notebook as a path under the server's root (what the frontend opens).

        A notebook renamed while its kernel runs keeps its session: the session's path is the
        notebook's current one, and the journal follows it.
        """
        try:
            sessions = await self.session_manager.list_sessions()
        except Exception:
            sessions = []
        live = {s["kernel"]["id"]: s["path"] for s in sessions
                if s.get("kernel") and s.get("path")}
        root = os.path.abspath(getattr(self.contents_manager, "root_dir", "") or os.getcwd())
        out: dict[str, str] = {}
        moved: dict[str, str] = {}
        for job in jobs:
            path = live.get(job.kernel_id)
            if path is not None:
                full = os.path.join(root, path)
                if job.notebook and job.notebook != full and not os.path.exists(job.notebook) \
                        and os.path.exists(full):
                    moved[job.id] = full  # renamed while the browser was away
                    job.notebook = full
                else:
                    path = None
            if path is not None:
                pass
            elif job.notebook and os.path.isabs(job.notebook):
                rel = os.path.relpath(job.notebook, root)
                path = "" if rel.startswith("..") else rel
            else:
                path = job.notebook
            out[job.id] = (path or "").replace(os.sep, "/")
        if moved:
            await self._run(_rename, moved)
        return out


def _rename(moved: dict[str, str]) -> None:
    journal = api.journal()
    for job_id, notebook in moved.items():
        journal.update(job_id, notebook=notebook)


def _full(job: JobRecord) -> dict[str, Any]:
    """One job with its cell and, if it failed, why (built from its files if not kept yet)."""
    from ..backends import backend_for_record
    from ..failure import error_of

    if job.state.final and not job.state.ok and not job.error:
        try:
            error_of(job, backend_for_record(job))
        except ClusterError:
            pass
    return job_json(job, full=True)


class JobHandler(_Handler):
    @web.authenticated
    async def get(self, ref: str) -> None:
        job = await self._job(ref)
        self._reply(await self._run(_full, job))


class LogsHandler(_Handler):
    @web.authenticated
    async def get(self, ref: str) -> None:
        stream = self.get_argument("stream", "stdout")
        if stream not in api.LOG_STREAMS:
            raise _error(400, f"unknown log stream {stream!r}; "
                              f"valid streams: {', '.join(api.LOG_STREAMS)}")
        tail = self._int_arg("tail", DEFAULT_TAIL, 1, MAX_TAIL)
        job = await self._job(ref)
        text = await self._run(api.job_logs, job.id, stream, tail)
        self._reply({"id": job.id, "stream": stream, "tail": tail, "state": job.state.value,
                     "text": text})


class CancelHandler(_Handler):
    @web.authenticated
    async def post(self, ref: str) -> None:
        job = await self._job(ref)
        updated = await self._run(api.cancel_job, job.id)
        self._reply(job_json(updated))


class RenameHandler(_Handler):
    """The frontend renamed (or moved) a notebook or a folder: its jobs follow."""

    @web.authenticated
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
            old, new = body["old"], body["new"]
        except (ValueError, KeyError, TypeError):
            raise _error(400, 'the body must be {"old": "<path>", "new": "<path>"}') from None
        if not (isinstance(old, str) and isinstance(new, str) and old and new):
            raise _error(400, "old and new must be paths under the server's root")
        root = os.path.abspath(getattr(self.contents_manager, "root_dir", "") or os.getcwd())
        moved = await self._run(api.journal().rename_notebook, os.path.join(root, old),
                                os.path.join(root, new))
        self._reply({"moved": moved})


class QueueHandler(_Handler):
    @web.authenticated
    async def get(self) -> None:
        profile = self.get_argument("profile", "") or None
        all_users = self.get_argument("all_users", "") in ("1", "true", "yes")
        self._reply(await self._run(_queue, profile, all_users))


def _queue(profile: str | None, all_users: bool) -> dict[str, Any]:
    from ..backends import backend_for
    from ..jobs import queue

    backend = backend_for(profile)
    return {"profile": backend.name, "scheduler": backend.scheduler.name, "queue": [
        {"native_id": q.native_id, "name": r.name if r else q.name, "user": q.user,
         "state": q.state.value, "native": q.native, "elapsed": q.elapsed, "reason": q.reason,
         "partition": q.partition, "nodes": q.nodes, "job": r.id if r else None}
        for q, r in queue(backend, all_users)]}


class QueueActionHandler(_Handler):
    @web.authenticated
    async def post(self, profile: str, action: str) -> None:
        from ..jobs import QUEUE_ACTIONS

        if action not in QUEUE_ACTIONS:
            raise _error(400, f"unknown action {action!r}; valid: {', '.join(QUEUE_ACTIONS)}")
        try:
            ids = json.loads(self.request.body or b"{}").get("ids")
        except (ValueError, AttributeError):
            ids = None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise _error(400, 'the body must be {"ids": ["<scheduler job id>", ...]}')
        failed = await self._run(_queue_action, profile, action, ids)
        self._reply({"profile": profile, "action": action, "failed": failed})


def _queue_action(profile: str, action: str, ids: list[str]) -> dict[str, str]:
    from ..backends import backend_for
    from ..jobs import queue_action

    return queue_action(backend_for(profile), action, ids)


class ProfilesHandler(_Handler):
    @web.authenticated
    async def get(self) -> None:
        self._reply({"profiles": await self._run(api.list_profiles)})


class MetricsHandler(_Handler):
    @web.authenticated
    async def get(self) -> None:
        self._reply({"profiles": await self._run(api.metrics)})


def route_table(base_url: str) -> list[tuple[str, type[APIHandler]]]:
    """The extension's URL patterns under ``base_url``."""
    root = url_path_join(base_url, "clusterjupyter")
    job = r"/jobs/(?P<ref>[^/]+)"
    return [
        (url_path_join(root, "jobs") + "/?", JobsHandler),
        (root + job + "/?", JobHandler),
        (root + job + "/logs/?", LogsHandler),
        (root + job + "/cancel/?", CancelHandler),
        (url_path_join(root, "profiles") + "/?", ProfilesHandler),
        (url_path_join(root, "queue") + "/?", QueueHandler),
        (url_path_join(root, "notebooks", "rename") + "/?", RenameHandler),
        (url_path_join(root, "queue") + r"/(?P<profile>[^/]+)/(?P<action>[a-z]+)/?",
         QueueActionHandler),
        (url_path_join(root, "metrics") + "/?", MetricsHandler),
    ]
