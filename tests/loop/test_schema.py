"""The ledger's schema version: a new ledger is current, an old one is migrated keeping every
row, a newer one is refused; on SQLite and on PostgreSQL (``[sqlite]``, ``[postgresql]``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import insert, inspect, text

from loop.errors import LedgerError
from loop.ledger import Ledger, ledger_url
from loop.schema import MIGRATIONS, SCHEMA_VERSION, metadata_obj, schema
from tests.backends import alike, query

V1_SQL = Path(__file__).with_name("ledger_v1.sql")  # the tables as alloop 2317036 created them

T = "2025-01-02 03:04:05.000000"
CELL = [[3.6, 0.0, 0.0], [0.0, 3.6, 0.0], [0.0, 0.0, 3.6]]
STRUCTURE = {"cell": CELL, "symbols": ["Cu"], "positions": [[0.0, 0.0, 0.0]], "pbc": [True, True, True]}
LABELS = {"energy_ev": -0.5, "forces_ev_per_a": [[0.1, 0.0, -0.1]], "stress_ev_per_a3": [0.01, 0, 0, 0, 0, 0]}
# What the DFT runner wrote before results were typed: the labelled structure in the metadata.
DFT_METADATA = {"formula": "Cu", "structure": STRUCTURE, **LABELS, "n_steps": 3}
# Keys that make no frame (forces of the wrong shape): the row keeps them.
BAD_METADATA = {"structure": STRUCTURE, "energy_ev": 1.0, "forces_ev_per_a": [[0.0, 0.0]]}
ROWS = {
    "campaigns": [
        (1, "old", '{"objectives": [{"name": "y"}]}', "abc", 7, '{"python": "3.11"}', T),
        (2, "stopped", '{"objectives": [{"name": "y"}]}', "def", 1, "{}", T),
    ],
    "runs": [(1, 1, 7, "abc", "{}", "host", 11, T), (2, 2, 1, "def", "{}", "host", 12, T)],
    "candidates": [
        (1, "c1", '{"x": 0.5}', 1, T),
        (1, "c2", '{"x": 0.7}', 1, T),
        (2, "c1", '{"x": 1}', 2, T),
        (2, "c2", '{"x": 2}', 2, T),
        (2, "c3", '{"x": 3}', 2, T),
    ],
    "evaluations": [
        (1, 1, "c1", 0, "done", None, 1.0, None, None, 1, T, T, T, '{"note": "ok"}'),
        (2, 1, "c2", 0, "failed", "job-2", None, "boom", True, 1, T, T, T, None),
        (3, 2, "c1", 0, "submitted", "job-3", None, None, None, 2, T, T, None, None),
        (4, 2, "c2", 0, "done", None, 1.0, None, None, 2, T, T, T, json.dumps(DFT_METADATA)),
        (5, 2, "c3", 0, "done", None, 1.0, None, None, 2, T, T, T, json.dumps(BAD_METADATA)),
    ],
    "results": [(1, "y", 0.25, 0.01, "eV", 1, T), (4, "y", -0.5, None, "eV/atom", 2, T)],
    "cycles": [
        (1, 0, "closed", "qlognei", "{}", "[]", None, 1, T, T),
        (2, 0, "closed", "random", None, "[]", "the candidate pool is exhausted", 2, T, T),
    ],
    "flow_leases": [("old", "h", "flow run x", "host", 11, 1.0, 2.0)],
}


def _execute(location: Path | str, *statements: str) -> None:
    """Run ``statements`` in one transaction, straight on the database."""
    engine = sqlalchemy.create_engine(ledger_url(location))
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def _old_ledger(location: Path | str) -> None:
    """A version-1 ledger holding :data:`ROWS`."""
    engine = sqlalchemy.create_engine(ledger_url(location))
    ddl = V1_SQL.read_text()
    postgres = engine.dialect.name == "postgresql"
    if postgres:  # the same tables as SQLAlchemy created them on PostgreSQL
        ddl = ddl.replace("DATETIME", "TIMESTAMP WITH TIME ZONE").replace("\tid INTEGER", "\tid SERIAL")
    ddl = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    try:
        with engine.begin() as conn:
            for statement in filter(str.strip, ddl.split(";")):
                conn.exec_driver_sql(statement)
            for table, rows in ROWS.items():
                marks = ", ".join(f":p{i}" for i in range(len(rows[0])))
                conn.execute(
                    text(f"INSERT INTO {table} VALUES ({marks})"),
                    [{f"p{i}": value for i, value in enumerate(row)} for row in rows],
                )
            if postgres:  # rows inserted with their ids: move the id sequences past them
                for table in ("campaigns", "runs", "evaluations"):
                    sequence = f"pg_get_serial_sequence('{table}', 'id')"
                    conn.exec_driver_sql(f"SELECT setval({sequence}, (SELECT max(id) FROM {table}))")
    finally:
        engine.dispose()


def _v2_ledger(location: Path | str) -> None:
    """The v1 ledger taken to version 2, as alloop left it before typed results."""
    _old_ledger(location)
    engine = sqlalchemy.create_engine(ledger_url(location))
    try:
        with engine.begin() as conn:
            MIGRATIONS[1](conn)
            metadata_obj.create_all(conn, tables=[metadata_obj.tables[name] for name in ("leases", "schema")])
            conn.execute(insert(schema).values(version=2))
    finally:
        engine.dispose()


def _assert_frames_moved(location: Path | str) -> None:
    """The labelled structure of evaluation 4 is in ``evaluations.frame``, out of its metadata;
    every other column of every evaluation is as it was."""
    width = len(ROWS["evaluations"][0])
    assert [r[: width - 1] for r in _rows(location, "evaluations", width)] == [
        r[: width - 1] for r in _expected("evaluations")
    ]
    stored = query(location, "SELECT id, metadata, frame FROM evaluations ORDER BY id")
    metadata = {i: m for i, m, _ in stored}
    frames = {i: f for i, _, f in stored}
    kept = {"formula": "Cu", "n_steps": 3}
    assert metadata == {1: {"note": "ok"}, 2: None, 3: None, 4: kept, 5: BAD_METADATA}
    assert frames == {1: None, 2: None, 3: None, 4: {"id": "c2", "structure": STRUCTURE, **LABELS}, 5: None}
    with Ledger(location) as ledger:
        moved, bad = ledger.evaluations(2, ["done"])
    assert moved.metadata == kept and moved.frame is not None
    assert moved.frame.id == "c2" and moved.frame.energy == -0.5
    assert moved.frame.forces.tolist() == LABELS["forces_ev_per_a"]
    assert moved.frame.stress is not None and moved.frame.stress.tolist() == LABELS["stress_ev_per_a3"]
    assert moved.frame.cell.tolist() == CELL and moved.frame.numbers.tolist() == [29]
    assert bad.frame is None and bad.metadata == BAD_METADATA


def _rows(location: Path | str, table: str, width: int) -> list[tuple[object, ...]]:
    return [row[:width] for row in query(location, f"SELECT * FROM {table} ORDER BY 1, 2")]


def _expected(table: str) -> list[tuple[object, ...]]:
    return [tuple(alike(value) for value in row) for row in ROWS[table]]


def _version(location: Path | str) -> int:
    return int(query(location, "SELECT version FROM schema")[0][0])


def _tables_and_columns(location: Path | str, table: str) -> tuple[set[str], list[str]]:
    engine = sqlalchemy.create_engine(ledger_url(location))
    try:
        found = inspect(engine)
        return set(found.get_table_names()), [c["name"] for c in found.get_columns(table)]
    finally:
        engine.dispose()


def test_a_new_ledger_is_current(ledger_location: Path | str) -> None:
    Ledger(ledger_location).close()
    assert _version(ledger_location) == SCHEMA_VERSION


def test_an_old_ledger_is_migrated_keeping_every_row(ledger_location: Path | str) -> None:
    _old_ledger(ledger_location)

    with Ledger(ledger_location) as ledger:
        assert ledger.campaign_names() == ["old", "stopped"]
        (done,) = ledger.evaluations(1, ["done"])
        assert done.values == {"y": 0.25} and done.metadata == {"note": "ok"}
        assert ledger.status_counts(2)["submitted"] == 1
        assert ledger.open_campaign("new", {}, "h", 0) == 3  # the ids go on after the old rows

    assert _version(ledger_location) == SCHEMA_VERSION
    for table, rows in ROWS.items():
        if table not in ("flow_leases", "evaluations"):  # leases are renewed every minute: the old table goes
            assert _rows(ledger_location, table, len(rows[0]))[: len(rows)] == _expected(table), table
    _assert_frames_moved(ledger_location)
    stops = query(ledger_location, "SELECT name, stop_reason FROM campaigns ORDER BY id")
    tables, _ = _tables_and_columns(ledger_location, "campaigns")
    assert stops == [("old", None), ("stopped", "the candidate pool is exhausted"), ("new", None)]
    assert "flow_leases" not in tables and {"leases", "schema"} <= tables
    Ledger(ledger_location).close()  # opening a current ledger again changes nothing
    assert _version(ledger_location) == SCHEMA_VERSION
    assert _rows(ledger_location, "runs", 8) == _expected("runs")


def test_a_v2_ledger_moves_its_labelled_structures_into_frames(ledger_location: Path | str) -> None:
    _v2_ledger(ledger_location)
    assert _version(ledger_location) == 2
    Ledger(ledger_location).close()
    assert _version(ledger_location) == SCHEMA_VERSION
    for table, rows in ROWS.items():
        if table not in ("flow_leases", "evaluations"):
            assert _rows(ledger_location, table, len(rows[0])) == _expected(table), table
    _assert_frames_moved(ledger_location)


def test_a_failed_migration_leaves_the_old_ledger_as_it_was(ledger_location: Path | str) -> None:
    _old_ledger(ledger_location)
    # A column the migration adds: it fails half-way.
    _execute(ledger_location, "ALTER TABLE campaigns ADD COLUMN stopped_at TEXT")
    with pytest.raises(LedgerError, match=re.escape(str(ledger_location))):
        Ledger(ledger_location)
    tables, columns = _tables_and_columns(ledger_location, "campaigns")
    assert "schema" not in tables and "flow_leases" in tables and "stop_reason" not in columns


def test_a_newer_ledger_is_refused(ledger_location: Path | str) -> None:
    Ledger(ledger_location).close()
    _execute(ledger_location, f"UPDATE schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        Ledger(ledger_location)


def test_version_5_gives_every_old_evaluation_the_default_fidelity_and_keys_on_it(
    ledger_location: Path | str,
) -> None:
    from loop.candidate import Candidate
    from loop.errors import DuplicateCandidateError
    from loop.ledger import Proposal
    from loop.schema import DEFAULT_FIDELITY

    _old_ledger(ledger_location)
    with Ledger(ledger_location) as ledger:
        old = {e.id: e for campaign in (1, 2) for e in ledger.evaluations(campaign)}
        assert sorted(old) == [1, 2, 3, 4, 5] and {e.fidelity for e in old.values()} == {DEFAULT_FIDELITY}
        assert ledger.spent_by_fidelity(1) == {DEFAULT_FIDELITY: (2, 1.0)}
        run = ledger.start_run(1)
        c1 = Candidate({"x": 0.5}, "c1")
        with pytest.raises(DuplicateCandidateError):  # the old key still holds at its fidelity
            ledger.propose(1, run, 1, [Proposal(c1)], "random", None)
        (new,) = ledger.propose(1, run, 1, [Proposal(c1, fidelity="screen", cost=0.1)], "mf_ucb", None)
        assert ledger.spent_by_fidelity(1) == {DEFAULT_FIDELITY: (2, 1.0), "screen": (1, 0.1)}
        (done,) = ledger.evaluations(1, ["done"])
        assert done.values == {"y": 0.25}  # results still point at their evaluations
    width = len(ROWS["evaluations"][0])
    assert [r[: width - 1] for r in _rows(ledger_location, "evaluations", width)][:5] == [
        r[: width - 1] for r in _expected("evaluations")
    ]
    assert new > 5  # the ids go on after the old rows (PostgreSQL may skip the refused one)
