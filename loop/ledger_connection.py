"""Opening a ledger's database, and trying again while a server is away.

The base of :class:`~loop.ledger.Ledger`: a SQLite file is checked before anything touches it,
the engine is made (:mod:`loop.database`), the tables prepared or migrated (:mod:`loop.schema`),
and every operation runs in whole transactions that :func:`reconnecting` repeats while the
connection to a database server is lost.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, Self, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from loop.database import create_engine, database_reason, masked, retrying
from loop.errors import LedgerError
from loop.schema import prepare

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound="LedgerConnection")


def reconnecting(method: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
    """Run a ledger method again when the database connection was lost
    (:meth:`LedgerConnection.retrying`)."""

    @functools.wraps(method)
    def again(self: C, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.retrying(lambda: method(self, *args, **kwargs))

    return again


def ledger_url(location: str | Path) -> str:
    """An SQLAlchemy URL for a file path (SQLite) or a URL given as is."""
    text = str(location)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


class LedgerConnection:
    """A ledger's database, open and prepared.

    Args:
        location: A file path (SQLite) or an SQLAlchemy URL.
        create: Create a SQLite file that does not exist yet (else refuse it).
        reconnect_s: Once open, how long each operation keeps trying again while the
            connection to a database server is lost (a restart, a network cut).

    Raises:
        LedgerError: the ledger cannot be used: a missing file (``create=False``) or folder, a
            file that is not a SQLite database, a folder or file it may not write to, an
            unreachable server. The message is one line naming the path (or URL, its password
            masked). Opening does not wait for a server: a wrong URL fails at once.
    """

    def __init__(self, location: str | Path, create: bool = True, reconnect_s: float = 60.0) -> None:
        self.url = ledger_url(location)
        self.path = _sqlite_path(self.url)
        self.reconnect_s = reconnect_s
        if self.path is not None:
            _check_file(self.path, create)
        try:
            self.engine: Engine = create_engine(self.url)
        except (SQLAlchemyError, ImportError) as exc:  # a malformed URL, a driver not installed
            raise LedgerError(f"ledger {self.where} cannot be used: {exc}") from exc
        try:
            # In a write transaction that serializes on the tables (SQLite's write lock,
            # PostgreSQL's advisory lock): two processes creating a new ledger at once take turns.
            with self.transaction() as conn:
                prepare(conn, self.where)
        except LedgerError:
            self.engine.dispose()
            raise
        except (SQLAlchemyError, sqlite3.Error) as exc:
            self.engine.dispose()
            raise LedgerError(f"ledger {self.where} cannot be used: {database_reason(exc)}") from exc

    @property
    def where(self) -> str:
        """The ledger's file (quoted) or URL (password masked), for messages."""
        return repr(str(self.path)) if self.path is not None else masked(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed on exit, rolled back on error."""
        with self.engine.execution_options(write=True).begin() as conn:
            yield conn

    def retrying(self, work: Callable[[], R]) -> R:
        """``work()`` (whole transactions on this ledger), run again while the connection to
        the database server is lost, for up to ``reconnect_s``; see :func:`loop.database.retrying`.

        Raises:
            LedgerError: still unreachable after ``reconnect_s``; one line naming the ledger.
        """
        return retrying(work, self.where, self.reconnect_s)


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (``None`` for other databases and in-memory SQLite)."""
    prefix = "sqlite:///"
    return Path(url.removeprefix(prefix)) if url.startswith(prefix) and url != prefix else None


def _check_file(path: Path, create: bool) -> None:
    """Refuse a SQLite file that cannot be a ledger, before anything touches it."""
    if path.exists():
        if not path.is_file():
            raise LedgerError(f"ledger {str(path)!r} is not a file")
        return
    if not create:
        raise LedgerError(f"ledger {str(path)!r} does not exist")
    if not path.parent.is_dir():
        raise LedgerError(f"ledger {str(path)!r}: its folder {str(path.parent)!r} does not exist")
