"""Tests of loop.ledger on a real SQLite file and a real PostgreSQL database (each test that
takes ``db`` runs on both: ``[sqlite]``, ``[postgresql]``)."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from loop.candidate import Candidate
from loop.errors import CampaignError, DuplicateCandidateError, LedgerError
from loop.frame import Frame
from loop.ledger import Ledger, Proposal, ledger_url
from loop.schema import DEFAULT_FIDELITY
from oracles.base import Measurement, Result
from tests.backends import another_writer, query, short_lock_waits

TABLES = ("campaigns", "runs", "candidates", "evaluations", "results", "cycles")


@pytest.fixture
def db(ledger_location: Path | str) -> Path | str:
    """A new ledger's file (SQLite) or URL (PostgreSQL)."""
    return ledger_location


@pytest.fixture
def ledger(db: Path):
    with Ledger(db) as led:
        yield led


@pytest.fixture
def started(ledger: Ledger) -> tuple[Ledger, int, int]:
    """A ledger with one campaign, one run and an open cycle 0."""
    cid = ledger.open_campaign("c1", {"a": 1}, "hash-1", seed=5)
    run = ledger.start_run(cid)
    assert ledger.open_cycle(cid, run) == 0
    return ledger, cid, run


def candidate(x: float) -> Candidate:
    return Candidate({"x": x, "gas": "Ar"})


def proposals(*xs: float) -> list[Proposal]:
    return [Proposal(candidate(x), acquisition_value=0.5, mean=[1.0], std=[0.1]) for x in xs]


def rows(db: Path | str, sql: str) -> list[tuple]:
    return query(db, sql)


def counts(db: Path | str) -> dict[str, int]:
    return {t: rows(db, f"SELECT COUNT(*) FROM {t}")[0][0] for t in TABLES}


def result(cid: str, value: float = 2.5, cost: float = 3.0) -> Result:
    return Result(
        cid,
        {"y": Measurement(value, 0.1, "eV"), "z": Measurement(-1.0, None, "nm")},
        cost=cost,
        metadata={"attempt": 1},
    )


# --- campaigns and runs -----------------------------------------------------------------------


def test_ledger_url():
    assert ledger_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert ledger_url("rel.db") == f"sqlite:///{Path('rel.db').resolve()}"


def test_open_campaign_creates_then_returns_the_same_id(ledger, db):
    first = ledger.open_campaign("c1", {"a": 1}, "hash-1", seed=5)
    again = ledger.open_campaign("c1", {"a": 1}, "hash-1", seed=5)
    other = ledger.open_campaign("c2", {"a": 2}, "hash-2", seed=6)
    assert first == again != other
    assert counts(db)["campaigns"] == 2
    assert ledger.campaign_names() == ["c1", "c2"]
    row = ledger.campaign("c1")
    assert row["config"] == {"a": 1} and row["config_hash"] == "hash-1" and row["seed"] == 5
    assert {"python", "torch", "botorch", "gpytorch"} <= set(row["versions"])


def test_reopening_stores_the_configuration_as_it_runs_now(ledger):
    # What the hash leaves out (the stopping rules, a default recalibration) may change on resume.
    first = ledger.open_campaign("c1", {"a": 1, "stopping": {"max_experiments": 8}}, "hash-1", seed=5)
    again = ledger.open_campaign("c1", {"a": 1, "stopping": {"max_experiments": 20}}, "hash-1", seed=5)
    assert first == again
    assert ledger.campaign("c1")["config"] == {"a": 1, "stopping": {"max_experiments": 20}}


def test_a_campaign_created_by_another_process_meanwhile_is_opened_not_refused(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two `alloop run` of a new campaign on one PostgreSQL ledger: both find no row, both insert.
    import loop.ledger

    insert_row = loop.ledger._inserted_id
    others: list[int] = []

    def another_process_first(conn, statement):
        if statement.table.name == "campaigns" and not others:
            others.append(0)
            with Ledger(postgres_url) as other:
                others[0] = other.open_campaign("c1", {"a": 1}, "hash-1", seed=5)
        return insert_row(conn, statement)

    monkeypatch.setattr(loop.ledger, "_inserted_id", another_process_first)
    with Ledger(postgres_url) as ledger:
        assert ledger.open_campaign("c1", {"a": 1}, "hash-1", seed=5) == others[0]
        with pytest.raises(CampaignError, match="different configuration"):
            ledger.open_campaign("c1", {"a": 9}, "hash-2", seed=5)
    assert query(postgres_url, "SELECT name, config_hash FROM campaigns") == [("c1", "hash-1")]


def test_reopening_with_another_hash_is_refused(ledger, db):
    ledger.open_campaign("c1", {"a": 1}, "hash-1", seed=5)
    with pytest.raises(CampaignError, match=r"'c1'.*hash-1.*hash-2"):
        ledger.open_campaign("c1", {"a": 9}, "hash-2", seed=5)
    assert rows(db, "SELECT config_hash FROM campaigns") == [("hash-1",)]


def test_campaign_lookup_errors(ledger):
    with pytest.raises(LedgerError, match="0 campaigns"):
        ledger.campaign()
    ledger.open_campaign("c1", {}, "h", 0)
    assert ledger.campaign()["name"] == "c1"
    ledger.open_campaign("c2", {}, "h", 0)
    with pytest.raises(LedgerError, match=r"2 campaigns \['c1', 'c2'\]"):
        ledger.campaign()
    with pytest.raises(LedgerError, match="no campaign named 'c3'"):
        ledger.campaign("c3")


def test_runs_record_provenance(started, db):
    _, cid, _ = started
    ((campaign_id, seed, chash, versions, host, pid, started_at),) = rows(
        db, "SELECT campaign_id, seed, config_hash, versions, host, pid, started_at FROM runs"
    )
    assert (campaign_id, seed, chash) == (cid, 5, "hash-1")
    assert {"torch", "botorch", "python"} <= set(versions)
    assert host == socket.gethostname()
    assert pid == os.getpid()
    assert started_at


def test_wal_mode_is_on(tmp_path):  # SQLite only
    db = tmp_path / "ledger.db"
    with Ledger(db) as ledger:
        ledger.open_campaign("c1", {}, "h", 0)
        assert rows(db, "PRAGMA journal_mode") == [("wal",)]
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


# --- cycles -----------------------------------------------------------------------------------


def test_open_cycle_returns_the_open_one_until_closed(started):
    ledger, cid, run = started
    assert ledger.open_cycle(cid, run) == 0
    ledger.close_cycle(cid, 0, stop_reason=None)
    assert ledger.open_cycle(cid, run) == 1
    assert ledger.open_cycle(cid, run) == 1
    ledger.close_cycle(cid, 1, stop_reason="budget spent")
    records = ledger.cycles(cid)
    assert [(c.cycle, c.status, c.stop_reason) for c in records] == [
        (0, "closed", None),
        (1, "closed", "budget spent"),
    ]


def test_cycles_are_per_campaign(started):
    ledger, _, _ = started
    other = ledger.open_campaign("c2", {}, "h2", 0)
    run2 = ledger.start_run(other)
    assert ledger.open_cycle(other, run2) == 0


# --- proposing --------------------------------------------------------------------------------


def test_propose_writes_candidates_evaluations_and_cycle(started, db):
    ledger, cid, run = started
    batch = proposals(0.1, 0.2)
    ids = ledger.propose(cid, run, 0, batch, "ucb", {"type": "GP", "n_train": 3})
    assert len(ids) == 2 and ids[0] != ids[1]
    assert counts(db) | {"campaigns": 1} == {
        "campaigns": 1,
        "runs": 1,
        "candidates": 2,
        "evaluations": 2,
        "results": 0,
        "cycles": 1,
    }
    records = ledger.evaluations(cid)
    assert [r.id for r in records] == ids
    assert [r.candidate_id for r in records] == [p.candidate.id for p in batch]
    assert records[0].params == {"x": 0.1, "gas": "Ar"}
    assert records[0].candidate == batch[0].candidate
    assert {r.status for r in records} == {"proposed"} and {r.cycle for r in records} == {0}
    (cycle,) = ledger.cycles(cid)
    assert cycle.acquisition == "ucb"
    assert cycle.surrogate == {"type": "GP", "n_train": 3}
    assert cycle.chosen == [p.as_dict() for p in batch]
    assert cycle.chosen[0] == {
        "candidate_id": batch[0].candidate.id,
        "acquisition_value": 0.5,
        "mean": [1.0],
        "std": [0.1],
    }


def test_proposal_as_dict_turns_non_finite_into_none():
    p = Proposal(candidate(0.1), acquisition_value=float("nan"), mean=[float("inf"), 1.0], std=None)
    assert p.as_dict() == {
        "candidate_id": p.candidate.id,
        "acquisition_value": None,
        "mean": [None, 1.0],
        "std": None,
    }


def test_duplicate_candidate_in_campaign_writes_nothing(started, db):
    ledger, cid, run = started
    ledger.propose(cid, run, 0, proposals(0.1), "ucb", None)
    before = counts(db)
    cycle_before = rows(db, "SELECT acquisition, chosen FROM cycles")
    with pytest.raises(DuplicateCandidateError, match="already"):
        ledger.propose(cid, run, 0, proposals(0.3, 0.1), "qlognei", {"x": 1})
    assert counts(db) == before
    assert rows(db, "SELECT acquisition, chosen FROM cycles") == cycle_before
    assert [r.candidate_id for r in ledger.evaluations(cid)] == [candidate(0.1).id]


def test_duplicate_inside_one_batch_is_refused_before_writing(started, db):
    ledger, cid, run = started
    before = counts(db)
    with pytest.raises(DuplicateCandidateError, match="twice"):
        ledger.propose(cid, run, 0, proposals(0.1, 0.2, 0.1), "ucb", None)
    assert counts(db) == before


def test_same_candidate_in_two_campaigns_is_fine(started, db):
    ledger, cid, run = started
    other = ledger.open_campaign("c2", {}, "h2", 0)
    run2 = ledger.start_run(other)
    ledger.open_cycle(other, run2)
    ledger.propose(cid, run, 0, proposals(0.1), "ucb", None)
    ledger.propose(other, run2, 0, proposals(0.1), "ucb", None)
    assert counts(db)["candidates"] == 2 and counts(db)["evaluations"] == 2
    assert ledger.evaluations(other)[0].candidate_id == ledger.evaluations(cid)[0].candidate_id


def test_duplicate_error_is_a_value_error(started):
    ledger, cid, run = started
    ledger.propose(cid, run, 0, proposals(0.1), "ucb", None)
    with pytest.raises(ValueError):
        ledger.propose(cid, run, 0, proposals(0.1), "ucb", None)


# --- status transitions -----------------------------------------------------------------------


def test_full_lifecycle_and_result_rows(started, db):
    ledger, cid, run = started
    (eid,) = ledger.propose(cid, run, 0, proposals(0.1), "ucb", None)
    ledger.mark_submitted(eid, external_id="job-7")
    ledger.record_result(eid, result(candidate(0.1).id), run)
    (record,) = ledger.evaluations(cid)
    assert record.status == "done"
    assert record.external_id == "job-7"
    assert record.cost == 3.0
    assert record.values == {"y": 2.5, "z": -1.0}
    assert record.uncertainties == {"y": 0.1, "z": None}
    assert sorted(
        rows(db, "SELECT evaluation_id, property, value, uncertainty, unit, run_id FROM results")
    ) == [
        (eid, "y", 2.5, 0.1, "eV", run),
        (eid, "z", -1.0, None, "nm", run),
    ]
    ((proposed, submitted, finished, metadata),) = rows(
        db, "SELECT proposed_at, submitted_at, finished_at, metadata FROM evaluations"
    )
    assert proposed and submitted and finished
    assert proposed <= submitted <= finished
    assert metadata == {"attempt": 1}


def test_a_results_frame_is_stored_typed_and_read_back(started, db):
    ledger, cid, run = started
    e1, e2 = ledger.propose(cid, run, 0, proposals(0.1, 0.2), "ucb", None)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=2)
    atoms.calc = EMT()
    c1 = candidate(0.1).id
    frame = Frame.from_atoms(
        atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(), id=c1
    )
    for eid, measured in ((e1, replace(result(c1), frame=frame)), (e2, result(candidate(0.2).id))):
        ledger.mark_submitted(eid)
        ledger.record_result(eid, measured, run)
    with_frame, without = ledger.evaluations(cid)
    assert with_frame.frame == frame and not with_frame.frame.forces.flags.writeable
    assert with_frame.metadata == {"attempt": 1} and without.frame is None
    assert rows(db, "SELECT frame IS NULL FROM evaluations ORDER BY id") == [(0,), (1,)]


def test_every_row_carries_its_run_and_timestamps(started, db):
    ledger, cid, run = started
    e1, e2 = ledger.propose(cid, run, 0, proposals(0.1, 0.2), "ucb", None)
    ledger.mark_submitted(e1)
    ledger.record_result(e1, result(candidate(0.1).id), run)
    ledger.record_failure(e2, "boom", retryable=True)
    assert rows(db, "SELECT run_id FROM candidates") == [(run,), (run,)]
    assert rows(
        db,
        "SELECT COUNT(*) FROM evaluations WHERE run_id = ? AND proposed_at IS NOT NULL".replace(
            "?", str(run)
        ),
    ) == [(2,)]
    assert rows(db, "SELECT COUNT(*) FROM evaluations WHERE finished_at IS NULL") == [(0,)]
    assert rows(db, f"SELECT COUNT(*) FROM results WHERE run_id = {run} AND created_at IS NOT NULL") == [(2,)]
    assert rows(db, f"SELECT COUNT(*) FROM cycles WHERE run_id = {run} AND started_at IS NOT NULL") == [(1,)]


def test_record_failure_keeps_reason_and_retryable(started):
    ledger, cid, run = started
    e1, e2 = ledger.propose(cid, run, 0, proposals(0.1, 0.2), "ucb", None)
    ledger.record_failure(e1, "x" * 5000, retryable=False)
    ledger.mark_submitted(e2)
    ledger.record_failure(e2, "furnace tripped", retryable=True, cost=0.5)
    r1, r2 = ledger.evaluations(cid)
    assert r1.status == r2.status == "failed"
    assert len(r1.error) == 4000 and r1.retryable is False
    assert r2.error == "furnace tripped" and r2.retryable is True and r2.cost == 0.5
    assert ledger.evaluations(cid, statuses=["done"]) == []


@pytest.mark.parametrize(
    ("path", "target"),
    [
        (["submitted", "done"], "submitted"),  # done -> submitted goes back
        (["submitted", "done"], "failed"),
        (["failed"], "submitted"),
        (["submitted"], "submitted"),
    ],
)
def test_refused_transitions_name_both_states_and_change_nothing(started, db, path, target):
    ledger, cid, run = started
    (eid,) = ledger.propose(cid, run, 0, proposals(0.1), "ucb", None)
    steps = {
        "submitted": lambda: ledger.mark_submitted(eid),
        "done": lambda: ledger.record_result(eid, result(candidate(0.1).id), run),
        "failed": lambda: ledger.record_failure(eid, "no", retryable=False),
    }
    for step in path:
        steps[step]()
    current = path[-1] if path else "proposed"
    before = (counts(db), rows(db, "SELECT * FROM evaluations"))
    with pytest.raises(LedgerError) as info:
        steps[target]()
    assert f"to {target!r}" in str(info.value) and f"from {current!r}" in str(info.value)
    assert (counts(db), rows(db, "SELECT * FROM evaluations")) == before


@pytest.mark.parametrize("submitted_and_done", [False, True], ids=["proposed->done", "done->done"])
def test_refused_record_result_is_a_ledger_error(started, db, submitted_and_done):
    ledger, cid, run = started
    (eid,) = ledger.propose(cid, run, 0, proposals(0.1), "ucb", None)
    if submitted_and_done:
        ledger.mark_submitted(eid)
        ledger.record_result(eid, result(candidate(0.1).id), run)
    before = (counts(db), rows(db, "SELECT * FROM evaluations"))
    short_lock_waits(ledger)
    with pytest.raises(LedgerError, match="to 'done' from"):
        ledger.record_result(eid, result(candidate(0.1).id, value=9.0), run)
    assert (counts(db), rows(db, "SELECT * FROM evaluations")) == before


def test_set_external_id(started):
    ledger, cid, run = started
    (eid,) = ledger.propose(cid, run, 0, proposals(0.1), "ucb", None)
    ledger.mark_submitted(eid)
    ledger.set_external_id(eid, "slurm-42")
    assert ledger.evaluations(cid)[0].external_id == "slurm-42"


# --- accounting -------------------------------------------------------------------------------


def test_status_counts_and_spent(started):
    ledger, cid, run = started
    assert ledger.status_counts(cid) == {"proposed": 0, "submitted": 0, "done": 0, "failed": 0}
    assert ledger.spent(cid) == (0, 0.0)
    e = ledger.propose(cid, run, 0, proposals(0.1, 0.2, 0.3, 0.4, 0.5), "ucb", None)
    ledger.mark_submitted(e[0])
    ledger.record_result(e[0], result(candidate(0.1).id, cost=2.0), run)
    ledger.mark_submitted(e[1])
    ledger.record_failure(e[1], "reached the oracle", retryable=True, cost=0.5)
    ledger.record_failure(e[2], "never submitted", retryable=False, cost=7.0)
    ledger.mark_submitted(e[3])
    assert ledger.status_counts(cid) == {"proposed": 1, "submitted": 1, "done": 1, "failed": 2}
    # done, failed-after-submission, submitted and proposed count; the never-submitted failure not.
    assert ledger.spent(cid) == (4, 2.5)
    other = ledger.open_campaign("c2", {}, "h2", 0)
    assert ledger.spent(other) == (0, 0.0)
    assert ledger.status_counts(other)["proposed"] == 0


def test_spent_per_cycle_and_fidelity_counts_what_spent_counts(started):
    ledger, cid, run = started
    e = ledger.propose(
        cid,
        run,
        0,
        [
            Proposal(candidate(0.1), fidelity="screen", cost=0.25),
            Proposal(candidate(0.2), fidelity="screen", cost=0.25),
            Proposal(candidate(0.1), cost=1.0),
        ],
        "mf_ucb",
        None,
    )
    ledger.record_failure(e[1], "never submitted", retryable=False)
    ledger.close_cycle(cid, 0)
    assert ledger.open_cycle(cid, run) == 1
    ledger.propose(cid, run, 1, [Proposal(candidate(0.3), cost=1.0)], "mf_ucb", None)
    assert ledger.spent_by_cycle(cid) == {
        (0, DEFAULT_FIDELITY): (1, 1.0),
        (0, "screen"): (1, 0.25),
        (1, DEFAULT_FIDELITY): (1, 1.0),
    }
    assert ledger.spent_by_fidelity(cid) == {DEFAULT_FIDELITY: (2, 2.0), "screen": (1, 0.25)}
    assert ledger.spent(cid) == (3, 2.25)


def test_evaluations_filter_by_status(started):
    ledger, cid, run = started
    e = ledger.propose(cid, run, 0, proposals(0.1, 0.2), "ucb", None)
    ledger.mark_submitted(e[1])
    assert [r.id for r in ledger.evaluations(cid, ["submitted"])] == [e[1]]
    assert [r.id for r in ledger.evaluations(cid, ["proposed", "submitted"])] == e


# --- durability -------------------------------------------------------------------------------


def test_a_second_ledger_on_the_same_file_sees_committed_data(started, db):
    ledger, cid, run = started
    (eid,) = ledger.propose(cid, run, 0, proposals(0.1), "ucb", None)
    ledger.mark_submitted(eid)
    ledger.record_result(eid, result(candidate(0.1).id), run)
    with Ledger(db) as other:
        assert other.campaign_names() == ["c1"]
        assert other.open_campaign("c1", {"a": 1}, "hash-1", 5) == cid
        (record,) = other.evaluations(cid)
        assert record.status == "done" and record.values == {"y": 2.5, "z": -1.0}
        run2 = other.start_run(cid)
        assert run2 != run
        assert other.open_cycle(cid, run2) == 0  # the open cycle is resumed, not duplicated
        (eid2,) = other.propose(cid, run2, 0, proposals(0.2), "ucb", None)
    # ...and the first instance sees what the second wrote.
    assert [r.id for r in ledger.evaluations(cid)] == [eid, eid2]
    assert rows(db, "SELECT COUNT(*) FROM runs") == [(2,)]


def test_data_survives_closing_and_reopening(db):
    with Ledger(db) as first:
        cid = first.open_campaign("c1", {}, "h", 0)
        run = first.start_run(cid)
        first.open_cycle(cid, run)
        first.propose(cid, run, 0, proposals(0.1), "ucb", None)
    with Ledger(db) as second:
        assert second.status_counts(cid)["proposed"] == 1


def test_reads_are_not_blocked_by_another_writer(started, db):
    ledger, cid, _ = started
    with another_writer(db):
        short_lock_waits(ledger)
        assert ledger.campaign_names() == ["c1"]
        assert ledger.status_counts(cid)["proposed"] == 0
