"""How the ledger talks to its database: SQLite (a file) or a server (PostgreSQL).

* :func:`create_engine` — SQLite with its pragmas and write locks taken up front; a server
  with connections pinged before use (a server restart leaves dead ones in the pool) and a
  bounded connect timeout.
* :func:`serialize` — make concurrent write transactions that would race (two processes creating
  a new ledger's tables, two writers taking one campaign's lease) take turns: SQLite's
  ``BEGIN IMMEDIATE`` already does; PostgreSQL takes a transaction-scoped advisory lock.
* :func:`retrying` — run a unit of work again when the connection was lost (a server restart,
  a dropped network), within a time budget, then fail with one line naming the database.
* :func:`masked` and :func:`database_reason` — one-line messages without the password.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from loop.errors import LedgerError

log = logging.getLogger("alloop")

T = TypeVar("T")

#: SQLSTATEs of a server that went away or is not there yet: connection exceptions (class 08),
#: an administrator's or a crash's shutdown, a server still starting up.
_GONE = ("08", "57P01", "57P02", "57P03")


def masked(url: str) -> str:
    """``url`` as written, but with its password (if any, ``user:password@`` or a
    ``password=`` query parameter) as ``***``, for messages and logs."""
    url = re.sub(r"^([\w+.-]+://[^:/@?]*:)[^@/?]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def create_engine(url: str) -> Engine:
    """An engine for the ledger at ``url``, set up for its dialect (see the module docstring)."""
    options: dict[str, Any] = {}
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        options["pool_pre_ping"] = True
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg", "psycopg2"):
        options["connect_args"] = {"connect_timeout": 10}
    engine = sqlalchemy.create_engine(url, future=True, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        # Write transactions take the write lock when they start, so concurrent writers
        # queue up on busy_timeout instead of failing on a lock upgrade; reads stay deferred.
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def serialize(conn: Connection, name: str) -> None:
    """Make write transactions on ``name`` take turns: until ``conn``'s transaction ends, any
    other transaction that serializes on ``name`` waits here.

    SQLite's write transactions already take turns (``BEGIN IMMEDIATE``); PostgreSQL takes an
    advisory lock (per database) released at commit or rollback. Other servers: nothing.
    """
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the database server went away (or is not reachable), as opposed to a
    refused statement, a lock timeout or a deadlock. SQLite never loses its connection."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if not hasattr(orig, "sqlstate"):  # not a PostgreSQL driver's error
        return False
    state = getattr(orig, "sqlstate", None)
    if state is None:  # the client's own: could not connect, the socket closed
        return isinstance(exc, sqlalchemy.exc.OperationalError)
    return str(state).startswith(_GONE)


def retrying(work: Callable[[], T], where: str, budget_s: float) -> T:
    """``work()``, run again while the connection to the database is lost, for up to
    ``budget_s`` seconds (waits of 0.2 s doubling to 5 s).

    ``work`` must be one or more whole transactions, safe to run again after a rollback: a
    transaction cut by a lost connection was rolled back by the server. (A connection lost
    during the commit itself leaves it unknown whether it committed; the ledger's unique keys
    and one-way status transitions then refuse the second attempt with a clear error.)

    Raises:
        LedgerError: the connection is still lost after ``budget_s``; one line naming
            ``where`` (with the password masked) and why.
    """
    deadline = time.monotonic() + budget_s
    wait_s, attempts = 0.2, 1
    while True:
        try:
            return work()
        except DBAPIError as exc:
            if not connection_lost(exc):
                raise
            reason = database_reason(exc)
            if time.monotonic() + wait_s > deadline:
                raise LedgerError(
                    f"ledger {where} is unreachable: {reason} (gave up after {attempts} "
                    f"attempt{'s' if attempts > 1 else ''} in {budget_s:g} s)"
                ) from exc
            log.warning("ledger %s: connection lost (%s); trying again in %.1f s", where, reason, wait_s)
            time.sleep(wait_s)
            wait_s, attempts = min(2 * wait_s, 5.0), attempts + 1


def database_reason(exc: BaseException) -> str:
    """One line saying why the database refused, with a hint for the usual causes."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    hints = [
        (("file is not a database",), "not a SQLite database (a corrupt or foreign file?)"),
        (("unable to open database file",), "cannot open or create it (is its folder writable?)"),
        (("readonly database",), "read-only (is the file or its folder writable?)"),
        (('database "', "does not exist"), "create it first (createdb), or correct the URL"),
        (("connection to server",), "is the server running, and are the URL's host and port right?"),
    ]
    return next((f"{reason}: {hint}" for keys, hint in hints if all(k in reason for k in keys)), reason)


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by the "begin" event
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL may wait for the lock
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
