"""The journal: a SQLite (WAL) record of every job, shared by all kernels and the server extension.

It holds what is needed to find, show and recover a job — never the result data itself (that
stays in the job directory, signed).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Iterator, cast

from .errors import AmbiguousJobError, JournalError, UnknownJobError
from .paths import journal_path
from .serialize import FingerprintStore
from .states import JobState
from .text import short_duration as format_seconds  # noqa: F401  (re-exported)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,   -- uuid hex, ours
    name          TEXT NOT NULL,
    profile       TEXT NOT NULL,
    scheduler     TEXT NOT NULL,
    native_id     TEXT,               -- the scheduler's id (pid, SLURM job id ...)
    state         TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',   -- queue reason while pending, exit reason at the end
    exit_code     INTEGER,
    submitted     REAL NOT NULL,
    started       REAL,
    finished      REAL,
    updated       REAL NOT NULL,
    cell          TEXT NOT NULL,
    kernel_id     TEXT NOT NULL DEFAULT '',
    notebook      TEXT NOT NULL DEFAULT '',
    host          TEXT NOT NULL DEFAULT '',   -- where it ran
    job_dir       TEXT NOT NULL,              -- on the machine that ran it
    result_status TEXT NOT NULL DEFAULT 'none',   -- none | available | pushed | failed
    outputs       TEXT NOT NULL DEFAULT '[]',     -- names the cell binds (static analysis)
    options       TEXT NOT NULL DEFAULT '{}',     -- submit options (resources ...), JSON
    error         TEXT NOT NULL DEFAULT '{}',     -- why a job did not complete, JSON (failure.py)
    cell_id       TEXT NOT NULL DEFAULT ''        -- the notebook cell that submitted it
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_submitted ON jobs(submitted);
CREATE TABLE IF NOT EXISTS counters (
    profile       TEXT NOT NULL,
    name          TEXT NOT NULL,      -- scheduler_commands, reconnects, submissions_retried ...
    value         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (profile, name)
);
CREATE TABLE IF NOT EXISTS sweeps (
    id            TEXT PRIMARY KEY,   -- the first array's 24-digit element prefix
    name          TEXT NOT NULL,
    profile       TEXT NOT NULL,
    created       REAL NOT NULL,
    size          INTEGER NOT NULL,   -- number of elements
    axes          TEXT NOT NULL DEFAULT '[]',   -- parameter names, JSON
    outputs       TEXT NOT NULL DEFAULT '[]',   -- names the cell binds, JSON
    params        BLOB NOT NULL,      -- every element's parameters, pickled ...
    params_mac    TEXT NOT NULL       -- ... and signed (HMAC, per-user secret)
);
CREATE TABLE IF NOT EXISTS sweep_elements (
    sweep_id      TEXT NOT NULL,
    idx           INTEGER NOT NULL,   -- the element's index in the sweep
    attempt       INTEGER NOT NULL,   -- 0, then one more for each retry
    job_id        TEXT NOT NULL,      -- the element's job (in jobs)
    PRIMARY KEY (sweep_id, idx, attempt)
);
CREATE INDEX IF NOT EXISTS sweep_elements_job ON sweep_elements(job_id);
CREATE TABLE IF NOT EXISTS fingerprints (
    fingerprint   TEXT PRIMARY KEY,   -- size:xxh3-128 of a large input blob
    sha256        TEXT NOT NULL,      -- its content address
    seen          REAL NOT NULL
);
"""
#: fingerprints kept (least recently seen go first)
FINGERPRINTS_MAX = 4096

#: what may name a job by its id: 4 to 32 hex digits
_HEX_PREFIX = re.compile(r"[0-9a-fA-F]{4,32}")

ACTIVE = (JobState.PENDING.value, JobState.RUNNING.value)


@dataclass
class JobRecord:
    id: str
    name: str
    profile: str
    scheduler: str
    state: JobState
    submitted: float
    cell: str
    job_dir: str
    native_id: str | None = None
    reason: str = ""
    exit_code: int | None = None
    started: float | None = None
    finished: float | None = None
    updated: float = 0.0
    kernel_id: str = ""
    notebook: str = ""
    host: str = ""
    result_status: str = "none"
    outputs: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)
    cell_id: str = ""

    @property
    def elapsed(self) -> float | None:
        """Seconds running (or ran); None while pending."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["state"] = self.state.value
        d["elapsed"] = self.elapsed
        return d

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "JobRecord":
        d = dict(row)
        d["state"] = JobState(d["state"])
        d["outputs"] = json.loads(d["outputs"] or "[]")
        d["options"] = json.loads(d["options"] or "{}")
        d["error"] = json.loads(d.get("error") or "{}")
        return cls(**d)


class Journal:
    """Thread-safe access to the journal database at ``path``."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        #: when this process last brought the active jobs up to date (api.refresh_active)
        self.refreshed = 0.0
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        try:
            with self._conn() as c:
                c.executescript(SCHEMA)
                _migrate(c)
        except sqlite3.DatabaseError as e:
            self._local.conn = None
            raise JournalError(
                f"the job journal {path} cannot be read ({e}). Move it aside to start a new "
                f"one (mv {path} {path}.broken); the jobs it recorded will no longer be "
                "listed, their job directories stay where they are") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            try:
                os.chmod(self.path, 0o600)
            except OSError:
                pass
        return conn

    def add(self, rec: JobRecord) -> None:
        d = rec.to_json()
        d.pop("elapsed")
        d["outputs"] = json.dumps(rec.outputs)
        d["options"] = json.dumps(rec.options)
        d["error"] = json.dumps(rec.error)
        d["updated"] = time.time()
        cols = ", ".join(d)
        marks = ", ".join(f":{k}" for k in d)
        self._conn().execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", d)

    _UPDATABLE = {"native_id", "state", "reason", "exit_code", "started", "finished", "host",
                  "result_status", "job_dir", "error", "cell_id", "notebook"}

    def update(self, job_id: str, **changes: Any) -> None:
        bad = set(changes) - self._UPDATABLE
        if bad:
            raise ValueError(f"journal fields not updatable: {sorted(bad)}")
        if "state" in changes and isinstance(changes["state"], JobState):
            changes["state"] = changes["state"].value
        if isinstance(changes.get("error"), dict):
            changes["error"] = json.dumps(changes["error"])
        changes["updated"] = time.time()
        sets = ", ".join(f"{k} = :{k}" for k in changes)
        self._conn().execute(f"UPDATE jobs SET {sets} WHERE id = :id", {**changes, "id": job_id})

    def rename_notebook(self, old: str, new: str) -> int:
        """Jobs of notebook ``old`` (or of notebooks under directory ``old``) now belong to
        ``new``; returns how many jobs moved."""
        c = self._conn()
        n = c.execute("UPDATE jobs SET notebook = ?, updated = ? WHERE notebook = ?",
                      (new, time.time(), old)).rowcount
        prefix = old.rstrip("/") + "/"
        n += c.execute("UPDATE jobs SET notebook = ? || substr(notebook, ?), updated = ? "
                       "WHERE substr(notebook, 1, ?) = ?",
                       (new.rstrip("/") + "/", len(prefix) + 1, time.time(), len(prefix),
                        prefix)).rowcount
        return n

    def get(self, job_id: str) -> JobRecord | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row else None

    def find(self, ref: str) -> JobRecord:
        """A job by id, id prefix (4+ hex digits), name or native id, matched literally.

        An id prefix shared by several jobs is an :class:`AmbiguousJobError` listing them; a
        name or native id used more than once means the newest such job.
        """
        ref = ref.strip()
        conn = self._conn()
        if _HEX_PREFIX.fullmatch(ref):
            prefix = ref.lower()
            rows = conn.execute(
                "SELECT * FROM jobs WHERE substr(id, 1, :n) = :p ORDER BY submitted DESC "
                "LIMIT 11", {"n": len(prefix), "p": prefix}).fetchall()
            if len(rows) == 1:
                return JobRecord.from_row(rows[0])
            if rows:
                raise AmbiguousJobError(ref, [JobRecord.from_row(r) for r in rows])
        row = conn.execute(
            "SELECT * FROM jobs WHERE name = :r OR native_id = :r ORDER BY submitted DESC "
            "LIMIT 1", {"r": ref}).fetchone()
        if row is None:
            raise UnknownJobError(f"no job {ref!r} in the journal ({self.path}); a job is "
                                  "named by an id prefix (4+ hex digits), a name or a native id")
        return JobRecord.from_row(row)

    def list(self, states: tuple[str, ...] | None = None, profile: str | None = None,
             limit: int = 200, singles: bool = False) -> list[JobRecord]:
        """Jobs, newest first (``singles``: only those that are no sweep's element)."""
        sql = "SELECT * FROM jobs"
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if singles:
            where.append("id NOT IN (SELECT job_id FROM sweep_elements)")
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        if profile:
            where.append("profile = ?")
            args.append(profile)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submitted DESC LIMIT ?"
        args.append(limit)
        return [JobRecord.from_row(r) for r in self._conn().execute(sql, args).fetchall()]

    def active(self, profile: str | None = None) -> builtins.list[JobRecord]:
        return self.list(ACTIVE, profile, limit=100000)

    def count(self, profile: str, deltas: dict[str, int]) -> None:
        """Add ``deltas`` to the profile's counters (shared by every process of this user)."""
        self._conn().executemany(
            "INSERT INTO counters (profile, name, value) VALUES (?, ?, ?) ON CONFLICT "
            "(profile, name) DO UPDATE SET value = value + excluded.value",
            [(profile, name, n) for name, n in deltas.items() if n])

    def counters(self) -> dict[str, dict[str, int]]:
        """Every profile's counters: ``{profile: {name: value}}``."""
        out: dict[str, dict[str, int]] = {}
        for row in self._conn().execute("SELECT profile, name, value FROM counters"):
            out.setdefault(row[0], {})[row[1]] = row[2]
        return out

    def state_counts(self) -> dict[str, dict[str, int]]:
        """How many jobs each profile has in each state: ``{profile: {state: n}}``."""
        out: dict[str, dict[str, int]] = {}
        for row in self._conn().execute(
                "SELECT profile, state, count(*) FROM jobs GROUP BY profile, state"):
            out.setdefault(row[0], {})[row[1]] = row[2]
        return out

    def durations(self, limit: int = 1000) -> builtins.list[
            tuple[str, str, float, float | None, float | None]]:
        """(profile, state, submitted, started, finished) of the newest ``limit`` jobs of
        each profile, for timings."""
        return [tuple(r) for r in self._conn().execute(  # type: ignore[misc]
            "SELECT profile, state, submitted, started, finished FROM (SELECT *, "
            "row_number() OVER (PARTITION BY profile ORDER BY submitted DESC) AS n FROM jobs) "
            "WHERE n <= ?", (limit,))]

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self.list())

    # -- sweeps (one record, its elements' jobs by index and attempt) -------------------------
    def add_sweep(self, sweep: dict[str, Any]) -> None:
        d = dict(sweep, axes=json.dumps(sweep["axes"]), outputs=json.dumps(sweep["outputs"]))
        cols = ", ".join(d)
        self._conn().execute(f"INSERT INTO sweeps ({cols}) VALUES "
                             f"({', '.join(':' + k for k in d)})", d)

    def add_jobs(self, recs: builtins.list[JobRecord], sweep_id: str, attempt: int,
                 indices: builtins.list[int]) -> None:
        """Many element jobs of a sweep in one transaction."""
        c = self._conn()
        with _transaction(c):
            for rec in recs:
                self.add(rec)
            c.executemany("INSERT INTO sweep_elements (sweep_id, idx, attempt, job_id) "
                          "VALUES (?, ?, ?, ?)",
                          [(sweep_id, i, attempt, r.id)
                           for i, r in zip(indices, recs, strict=True)])

    def set_native_ids(self, ids: dict[str, str]) -> None:
        c = self._conn()
        with _transaction(c):
            c.executemany("UPDATE jobs SET native_id = ?, updated = ? WHERE id = ?",
                          [(n, time.time(), j) for j, n in ids.items()])

    def get_sweep(self, ref: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM sweeps WHERE id LIKE ? ORDER BY created DESC",
                                   (ref.lower() + "%",)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["axes"], d["outputs"] = json.loads(d["axes"]), json.loads(d["outputs"])
        return d

    def sweep_elements(self, sweep_id: str) -> builtins.list[tuple[int, int, str]]:
        """``(index, attempt, job id)`` of every attempt of every element."""
        return [tuple(r) for r in self._conn().execute(
            "SELECT idx, attempt, job_id FROM sweep_elements WHERE sweep_id = ? "
            "ORDER BY idx, attempt", (sweep_id,))]

    def sweep_overview(self, profile: str | None = None, limit: int = 200
                       ) -> builtins.list[dict[str, Any]]:
        """The newest sweeps (id, name, profile, created, size), each with ``states``: how many
        elements' latest attempts are in each state, ``native``: the native id of one element
        of its latest array, ``started`` and ``finished``: the first start and last end."""
        where, args = ("WHERE profile = ?", [profile]) if profile else ("", [])
        sweeps = [dict(r) for r in self._conn().execute(
            f"SELECT id, name, profile, created, size FROM sweeps {where} "
            "ORDER BY created DESC LIMIT ?", [*args, limit])]
        for s in sweeps:
            rows = self._sweep_states(s["id"])
            s["states"] = {JobState.parse(r[0]): r[1] for r in rows}
            s["native"] = max((r[2] or "" for r in rows), default="")
            s["started"] = min((r[3] for r in rows if r[3] is not None), default=None)
            s["finished"] = max((r[4] for r in rows if r[4] is not None), default=None)
        return sweeps

    def sweep_states(self, sweep_id: str) -> dict[JobState, int]:
        """How many of the sweep's elements (their latest attempts) are in each state."""
        return {JobState.parse(r[0]): r[1] for r in self._sweep_states(sweep_id)}

    def _sweep_states(self, sweep_id: str) -> builtins.list[Any]:
        return self._conn().execute(
            "SELECT j.state, COUNT(*), MAX(j.native_id), MIN(j.started), MAX(j.finished) "
            "FROM sweep_elements e JOIN jobs j ON j.id = e.job_id WHERE e.sweep_id = ? "
            "AND e.attempt = (SELECT MAX(x.attempt) FROM sweep_elements x "
            "WHERE x.sweep_id = e.sweep_id AND x.idx = e.idx) GROUP BY j.state",
            (sweep_id,)).fetchall()

    def sweep_jobs(self, sweep_ids: builtins.list[str],
                   states: tuple[str, ...] = ACTIVE) -> builtins.list[JobRecord]:
        """The element jobs of these sweeps that are in ``states`` (by default: active)."""
        if not sweep_ids:
            return []
        return [JobRecord.from_row(r) for r in self._conn().execute(
            "SELECT j.* FROM jobs j JOIN sweep_elements e ON e.job_id = j.id WHERE "
            f"e.sweep_id IN ({', '.join('?' * len(sweep_ids))}) "
            f"AND j.state IN ({', '.join('?' * len(states))})", [*sweep_ids, *states])]

    def sweep_latest(self, sweep_id: str, limit: int | None = None
                     ) -> builtins.list[tuple[int, int, JobRecord]]:
        """``(index, attempt, job)`` of each element's latest attempt: those not completed first,
        then by index (the first ``limit``; all if None) — what the front ends list."""
        out = []
        for row in self._conn().execute(
                "SELECT e.idx AS _idx, e.attempt AS _attempt, j.* FROM sweep_elements e "
                "JOIN jobs j ON j.id = e.job_id WHERE e.sweep_id = ? AND e.attempt = "
                "(SELECT MAX(x.attempt) FROM sweep_elements x WHERE x.sweep_id = e.sweep_id "
                "AND x.idx = e.idx) ORDER BY j.state = 'completed', e.idx LIMIT ?",
                (sweep_id, -1 if limit is None else limit)):
            d = dict(row)
            idx, attempt = d.pop("_idx"), d.pop("_attempt")
            out.append((idx, attempt, JobRecord.from_row(cast(Any, d))))
        return out

    @property
    def fingerprints(self) -> "Fingerprints":
        return Fingerprints(self)


#: columns added after the first release: (name, declaration) — added to older journals
ADDED_COLUMNS = (("error", "TEXT NOT NULL DEFAULT '{}'"), ("cell_id", "TEXT NOT NULL DEFAULT ''"))


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a journal written by an earlier version up to this schema (adds columns)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for name, decl in ADDED_COLUMNS:
        if name in have:
            continue
        try:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
        except sqlite3.OperationalError as e:  # another process added it meanwhile
            if "duplicate column" not in str(e):
                raise


class Fingerprints(FingerprintStore):
    """Fingerprint -> sha256 of large inputs, shared by every kernel of this user: a restarted
    kernel re-sending an unchanged 1 GiB array finds its address with a 30 ms xxh3 pass and
    sends nothing, instead of hashing (or uploading) it again."""

    def __init__(self, journal: Journal):
        self.journal = journal

    def get(self, fingerprint: str) -> str | None:
        c = self.journal._conn()
        row = c.execute("SELECT sha256 FROM fingerprints WHERE fingerprint = ?",
                        (fingerprint,)).fetchone()
        if row is None:
            return None
        c.execute("UPDATE fingerprints SET seen = ? WHERE fingerprint = ?",
                  (time.time(), fingerprint))
        return row[0]

    def put(self, fingerprint: str, sha256: str) -> None:
        c = self.journal._conn()
        c.execute("INSERT OR REPLACE INTO fingerprints VALUES (?, ?, ?)",
                  (fingerprint, sha256, time.time()))
        c.execute("DELETE FROM fingerprints WHERE fingerprint IN (SELECT fingerprint FROM "
                  "fingerprints ORDER BY seen DESC LIMIT -1 OFFSET ?)", (FINGERPRINTS_MAX,))


_default: Journal | None = None
_default_lock = threading.Lock()


def default_journal() -> Journal:
    """The journal of this user (one object per process; reopened if the path changed)."""
    global _default
    path = journal_path()
    with _default_lock:
        if _default is None or _default.path != path:
            _default = Journal(path)
        return _default
