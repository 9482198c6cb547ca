"""The reference lab's own database: runs, their idempotency keys and the e-stop state.

One SQLite file (WAL journal, one transaction per change), so the lab survives its own
restart: queued runs are still queued when it comes back. Status only moves forward::

    queued → running → succeeded | failed | cancelled
    queued → cancelled

and every transition is a conditional ``UPDATE ... WHERE status IN (...)``, so a late
instrument cannot overwrite a run that an e-stop or a cancel already settled. The
idempotency key is unique: however often a client replays a ``POST``, one key is one run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from oracles.lab.contract import ALLOWED_FROM, STATUSES, TERMINAL, RunStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    campaign TEXT NOT NULL,
    candidate_id TEXT NOT NULL,
    program TEXT NOT NULL,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    retryable INTEGER,
    error TEXT,
    result TEXT,
    instrument TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, seq);
CREATE INDEX IF NOT EXISTS runs_campaign ON runs (campaign);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def fingerprint(campaign: str, candidate_id: str, program: str, parameters: Mapping[str, Any]) -> str:
    """A hash of what a request asks for, to tell a replay from a reused key."""
    text = json.dumps(
        {"campaign": campaign, "candidate_id": candidate_id, "program": program, "parameters": parameters},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RunRecord:
    """One run as the lab stores it."""

    seq: int
    id: str
    idempotency_key: str
    fingerprint: str
    campaign: str
    candidate_id: str
    program: str
    parameters: Mapping[str, Any]
    status: RunStatus
    retryable: bool | None
    error: str | None
    result: Mapping[str, Any] | None
    instrument: str | None
    cancel_requested: bool
    requests: int
    created_at: str
    started_at: str | None
    finished_at: str | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RunRecord:
        return cls(
            seq=row["seq"],
            id=row["id"],
            idempotency_key=row["idempotency_key"],
            fingerprint=row["fingerprint"],
            campaign=row["campaign"],
            candidate_id=row["candidate_id"],
            program=row["program"],
            parameters=json.loads(row["parameters"]),
            status=row["status"],
            retryable=None if row["retryable"] is None else bool(row["retryable"]),
            error=row["error"],
            result=None if row["result"] is None else json.loads(row["result"]),
            instrument=row["instrument"],
            cancel_requested=bool(row["cancel_requested"]),
            requests=row["requests"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )


class KeyConflict(Exception):
    """An idempotency key came back with a different request than the one it first named."""


class LabStore:
    """The lab's SQLite database (thread-safe: one connection behind a lock).

    Args:
        path: The database file (created if missing); ``":memory:"`` for a throw-away lab.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # --- runs -------------------------------------------------------------------------------

    def create_run(
        self,
        key: str,
        campaign: str,
        candidate_id: str,
        program: str,
        parameters: Mapping[str, Any],
    ) -> tuple[RunRecord, bool]:
        """The run for ``key``: a new queued one, or the one an earlier request created.

        Returns:
            The run and whether it was created by this call.

        Raises:
            KeyConflict: ``key`` already names a run of a different request.
        """
        digest = fingerprint(campaign, candidate_id, program, parameters)
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM runs WHERE idempotency_key = ?", (key,)).fetchone()
            if row is not None:
                if row["fingerprint"] != digest:
                    raise KeyConflict(
                        f"Idempotency-Key already names run {row['id']} of a different request "
                        f"(campaign {row['campaign']!r}, candidate {row['candidate_id']!r})"
                    )
                conn.execute("UPDATE runs SET requests = requests + 1 WHERE seq = ?", (row["seq"],))
                row = conn.execute("SELECT * FROM runs WHERE seq = ?", (row["seq"],)).fetchone()
                return RunRecord.from_row(row), False
            run_id = f"run-{uuid.uuid4().hex[:20]}"
            conn.execute(
                "INSERT INTO runs (id, idempotency_key, fingerprint, campaign, candidate_id, program, "
                "parameters, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                (
                    run_id,
                    key,
                    digest,
                    campaign,
                    candidate_id,
                    program,
                    json.dumps(dict(parameters), sort_keys=True),
                    _now(),
                ),
            )
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            return RunRecord.from_row(row), True

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else RunRecord.from_row(row)

    def by_key(self, key: str) -> RunRecord | None:
        """The run an idempotency key created, if any."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM runs WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else RunRecord.from_row(row)

    def runs(self, campaign: str | None = None, statuses: Sequence[str] | None = None) -> list[RunRecord]:
        """Runs in submission order, optionally of one campaign and some statuses."""
        query, args = "SELECT * FROM runs WHERE 1 = 1", []
        if campaign is not None:
            query += " AND campaign = ?"
            args.append(campaign)
        if statuses is not None:
            query += f" AND status IN ({','.join('?' * len(statuses))})"
            args += list(statuses)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY seq", args).fetchall()
        return [RunRecord.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Runs by status."""
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status").fetchall()
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        counts.update({r["status"]: int(r["n"]) for r in rows})
        return counts

    def claim_next(self, instrument: str) -> RunRecord | None:
        """Move the oldest queued run to ``running`` on ``instrument``; ``None`` if none waits."""
        with self._transaction() as conn:
            row = conn.execute("SELECT seq FROM runs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE runs SET status = 'running', instrument = ?, started_at = ? WHERE seq = ?",
                (instrument, _now(), row["seq"]),
            )
            return RunRecord.from_row(
                conn.execute("SELECT * FROM runs WHERE seq = ?", (row["seq"],)).fetchone()
            )

    def finish(
        self,
        run_id: str,
        status: Literal["succeeded", "failed", "cancelled"],
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
        retryable: bool | None = None,
    ) -> bool:
        """Settle a run; ``False`` (and nothing written) if it was settled already."""
        allowed = ALLOWED_FROM[status]
        with self._transaction() as conn:
            changed = conn.execute(
                "UPDATE runs SET status = ?, result = ?, error = ?, retryable = ?, finished_at = ? "
                f"WHERE id = ? AND status IN ({','.join('?' * len(allowed))})",
                (
                    status,
                    None if result is None else json.dumps(dict(result)),
                    error,
                    None if retryable is None else int(retryable),
                    _now(),
                    run_id,
                    *allowed,
                ),
            ).rowcount
        return changed == 1

    def cancel(self, run_id: str, reason: str = "cancelled by the client") -> RunRecord | None:
        """Cancel a run (idempotent): a queued one at once, a running one is flagged and settled
        as cancelled when its instrument stops; a finished one is left as it is."""
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            if row["status"] == "queued":
                conn.execute(
                    "UPDATE runs SET status = 'cancelled', error = ?, retryable = 1, finished_at = ?, "
                    "cancel_requested = 1 WHERE id = ? AND status = 'queued'",
                    (reason, _now(), run_id),
                )
            elif row["status"] == "running":
                conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
            return RunRecord.from_row(conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())

    def cancel_all(self, reason: str) -> int:
        """Cancel every queued and running run at once (the e-stop); returns how many."""
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE runs SET status = 'cancelled', error = ?, retryable = 1, finished_at = ?, "
                "cancel_requested = 1 WHERE status IN ('queued', 'running')",
                (reason, _now()),
            ).rowcount

    def fail_interrupted(self) -> int:
        """At start-up: runs left ``running`` by a lab process that died are failed (retryable):
        the state of their sample is unknown. Queued runs stay queued."""
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE runs SET status = 'failed', retryable = 1, finished_at = ?, "
                "error = 'interrupted: the lab stopped while this run was on an instrument' "
                "WHERE status = 'running'",
                (_now(),),
            ).rowcount

    # --- lab state --------------------------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    def set_state(self, key: str, value: Any) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )
