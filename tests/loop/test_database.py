"""How the ledger connects: a lost connection to PostgreSQL is retried within a budget, an
unreachable server or a wrong URL fails at once with one line naming the URL (password
masked), and a refused statement is not mistaken for a lost connection."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from loop.database import masked
from loop.errors import LedgerError
from loop.ledger import Ledger
from tests.backends import PostgresServer, another_writer, running_server, short_lock_waits, unavailable

needs_postgres = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def test_masked_hides_the_password_and_keeps_the_rest() -> None:
    assert masked("postgresql+psycopg://me:s3cr%40t@db.lab:5433/alloop?host=/run/pg") == (
        "postgresql+psycopg://me:***@db.lab:5433/alloop?host=/run/pg"
    )
    assert masked("postgresql://me@/alloop?password=s3cret&sslmode=require") == (
        "postgresql://me@/alloop?password=***&sslmode=require"
    )
    assert masked("sqlite:////tmp/ledger.db") == "sqlite:////tmp/ledger.db"


def test_an_unknown_driver_is_one_line_naming_the_url() -> None:
    with pytest.raises(LedgerError) as refused:
        Ledger("postgresql+nodriver://me:s3cret@/alloop")
    message = str(refused.value)
    assert "postgresql+nodriver://me:***@/alloop cannot be used" in message
    assert "s3cret" not in message and "\n" not in message


@needs_postgres
def test_an_unreachable_server_fails_at_once_naming_the_url(tmp_path) -> None:
    url = f"postgresql+psycopg://me:s3cret@/alloop?host={tmp_path}"  # no server listens there
    started = time.monotonic()
    with pytest.raises(LedgerError) as refused:
        Ledger(url)
    message = str(refused.value)
    assert time.monotonic() - started < 10
    assert message.startswith(f"ledger postgresql+psycopg://me:***@/alloop?host={tmp_path} cannot be used")
    assert "is the server running" in message
    assert "s3cret" not in message and "\n" not in message


def test_a_missing_database_says_to_create_it(postgres_server: PostgresServer) -> None:
    with pytest.raises(LedgerError, match=r"database \"nope\" does not exist: create it first \(createdb\)"):
        Ledger(postgres_server.url("nope"))


def test_a_transaction_cut_by_a_lost_connection_is_run_again(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    with Ledger(postgres_server.create_database()) as ledger:
        cut: list[int] = []

        def cut_the_first_insert(conn, cursor, statement, *_):
            if statement.startswith("INSERT INTO campaigns") and not cut:
                cut.append(cursor.connection.info.backend_pid)
                postgres_server.execute(f"SELECT pg_terminate_backend({cut[0]}, 5000)")

        event.listen(ledger.engine, "before_cursor_execute", cut_the_first_insert)
        with caplog.at_level(logging.WARNING, logger="alloop"):
            campaign_id = ledger.open_campaign("c", {}, "h", 0)
        assert cut, "the connection was cut"
        assert ledger.campaign_names() == ["c"] and ledger.campaign()["id"] == campaign_id
        assert "connection lost" in caplog.text and "trying again" in caplog.text


def test_the_ledger_reconnects_after_a_server_restart_within_its_budget() -> None:
    with running_server() as server, Ledger(server.url(), reconnect_s=60) as ledger:
        ledger.open_campaign("c", {}, "h", 0)
        server.stop()
        restart = threading.Timer(1.0, server.start)
        restart.start()
        assert ledger.campaign_names() == ["c"]  # waits for the restart
        restart.join()
        server.stop()
        ledger.reconnect_s = 1.0
        started = time.monotonic()
        with pytest.raises(LedgerError) as gone:
            ledger.campaign_names()
        assert time.monotonic() - started < 10
        message = str(gone.value)
        assert message.startswith(f"ledger {server.url()} is unreachable: ")
        assert "gave up after" in message and "\n" not in message


def test_a_lock_timeout_is_not_a_lost_connection(postgres_url: str) -> None:
    with Ledger(postgres_url, reconnect_s=60) as ledger, another_writer(postgres_url):
        short_lock_waits(ledger)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            ledger.open_campaign("c", {}, "h", 0)
        assert time.monotonic() - started < 10, "not retried as if the server were gone"
