"""The ledger's two databases for the tests: a SQLite file, and a real PostgreSQL server.

:func:`ledger_location` runs a test once on each (``[sqlite]``, ``[postgresql]``). The server
is one per test session (so one per pytest-xdist worker), listening only on a unix socket in a
temporary folder, with a fresh database per test. It is Debian's ``postgresql`` package
(``initdb``, ``pg_ctl``); as root it runs as the ``postgres`` user (PostgreSQL refuses root).
Where the binaries or the ``psycopg`` driver are missing, the PostgreSQL tests skip, saying so.

:func:`query` reads a ledger's tables directly (not through :class:`~loop.ledger.Ledger`), the
same way on both.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event, text

from loop.ledger import Ledger, ledger_url

#: The database superuser initdb creates (trust authentication on the socket only).
USER = "alloop"


def _bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on the PATH, else Debian's newest version."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def unavailable() -> str | None:
    """Why no test server can run here (``None``: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'the PostgreSQL driver is not installed (pip install "psycopg[binary]")'
    if _bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql: initdb and pg_ctl not found)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    """``cmd`` as the ``postgres`` user when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresServer:
    """A server of our own in ``root`` (a new temporary folder): its data, log and socket."""

    root: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """An SQLAlchemy URL for ``database`` over the unix socket."""
        return f"postgresql+{driver}://{USER}@/{database}?host={self.socket_dir}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (``CREATE DATABASE`` needs it)."""
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), user=USER, dbname=database, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        bindir = _bindir()
        assert bindir is not None
        command = [str(bindir / "pg_ctl"), "-D", str(self.root / "data"), "-w", *args]
        return subprocess.run(_as_server_user(command), capture_output=True, text=True)

    def start(self) -> None:
        options = (
            f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off -c max_connections=200 -c timezone=UTC"
        )
        started = self._pg_ctl("-l", str(self.root / "log"), "-o", options, "start")
        if started.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            pytest.fail(f"PostgreSQL did not start: {started.stderr.strip()} {log[-2000:]}")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")


@contextmanager
def running_server() -> Iterator[PostgresServer]:
    """A new PostgreSQL server, started, stopped and deleted at the end; skips where none can
    run (:func:`unavailable`)."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    bindir = _bindir()
    assert bindir is not None
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="alloop-pg-")))  # short: socket paths are
    server.socket_dir.mkdir()  # limited to ~100 characters
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        for path in (server.root, server.socket_dir):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
    initdb = [str(bindir / "initdb"), "-D", str(server.root / "data"), "-U", USER, "--auth=trust"]
    subprocess.run(_as_server_user([*initdb, "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this session (this xdist worker); skips where none can run."""
    with running_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a new ledger goes: a SQLite file in ``tmp_path``, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "ledger.db"
    return str(request.getfixturevalue("postgres_url"))


def query(location: Path | str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the ledger's database, alike on both backends: JSON text parsed,
    timestamps as UTC text (``2025-01-02 03:04:05.000000``), as SQLite keeps them."""
    engine = sqlalchemy.create_engine(ledger_url(location))
    try:
        with engine.connect() as conn:
            return [tuple(alike(value) for value in row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def alike(value: Any) -> Any:
    """``value`` as :func:`query` gives it: JSON text parsed, a timestamp as UTC text."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def short_lock_waits(ledger: Ledger) -> None:
    """Make the ledger's lock waits fail after 0.2 s instead of 30 s (so a self-deadlock shows
    up fast)."""
    ledger.engine.dispose()
    postgres = ledger.engine.dialect.name == "postgresql"

    def shorten(dbapi: Any, _record: Any) -> None:
        dbapi.execute("SET lock_timeout = 200" if postgres else "PRAGMA busy_timeout=200")
        if postgres:
            dbapi.commit()

    event.listen(ledger.engine, "connect", shorten, insert=False)


@contextmanager
def another_writer(location: Path | str) -> Iterator[None]:
    """Another process in the middle of a write to the ledger's tables, until the block ends."""
    url = ledger_url(location)
    if url.startswith("sqlite"):
        writer = sqlite3.connect(str(location), isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            yield
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        return
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(text("LOCK TABLE campaigns, evaluations IN EXCLUSIVE MODE"))  # reads go on
            yield
    finally:
        engine.dispose()
