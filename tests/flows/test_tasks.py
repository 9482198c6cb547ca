"""The evaluation tasks' own behaviour, called directly (no Prefect server, no cluster):
a task run again after its worker was lost never evaluates twice, and batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.tasks import OracleFailure, OutcomeStore, _settle, evaluate_batch, evaluate_candidate
from loop.candidate import Candidate
from oracles.base import Measurement, Oracle, Result
from oracles.errors import EvaluationFailed, EvaluationInterrupted
from oracles.functions import branin
from oracles.simulated import EmulatedLab, read_journal


def _lab(journal: Path, **options: float) -> EmulatedLab:
    return EmulatedLab(branin, {"y": ""}, journal=journal, **options)  # type: ignore[arg-type]


def _candidates(n: int) -> list[Candidate]:
    return [Candidate({"x1": float(i), "x2": 1.0}) for i in range(n)]


def test_a_batch_run_again_returns_kept_outcomes_without_evaluating_again(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    store = OutcomeStore(str(tmp_path / "outcomes"))
    candidates = _candidates(3)

    first = evaluate_batch.fn(candidates, _lab(journal), store=store)
    again = evaluate_batch.fn(candidates, _lab(journal), store=store)  # Dask's rerun, another worker

    assert again == first and [o["result"]["candidate_id"] for o in first] == [c.id for c in candidates]
    assert [e["event"] for e in read_journal(journal)] == ["started", "finished"] * 3, "each evaluated once"


def test_a_rerun_resumes_a_batch_at_its_first_candidate_without_an_outcome(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    store = OutcomeStore(str(tmp_path / "outcomes"))
    candidates = _candidates(3)
    evaluate_batch.fn(candidates[:1], _lab(journal), store=store)  # the lost worker got this far

    evaluate_batch.fn(candidates, _lab(journal), store=store)

    finished = [e["candidate"] for e in read_journal(journal) if e["event"] == "finished"]
    assert finished == [c.id for c in candidates]


def test_failures_are_kept_too_and_come_back_as_the_oracle_raised_them(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    store = OutcomeStore(str(tmp_path / "outcomes"))
    (candidate,) = _candidates(1)
    with pytest.raises(OracleFailure) as first:
        evaluate_candidate.fn(candidate, _lab(journal, failure_probability=1.0), store=store)
    with pytest.raises(OracleFailure) as again:
        evaluate_candidate.fn(candidate, _lab(journal, failure_probability=1.0), store=store)

    assert str(again.value) == str(first.value)
    error = again.value.original()
    assert isinstance(error, EvaluationFailed) and error.retryable
    assert [e["event"] for e in read_journal(journal)].count("started") == 1


class _Interrupting(Oracle):
    """An oracle whose jobs are killed from outside (its worker's batch job ends) once."""

    implemented_properties = ("y",)

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, candidate: Candidate) -> Result:
        self.calls += 1
        if self.calls == 1:
            raise EvaluationInterrupted("interrupted: job x was killed by SIGTERM")
        return Result(candidate.id, {"y": Measurement(1.0)})


def test_an_interrupted_evaluation_is_not_kept_so_a_rerun_evaluates_it_afresh(tmp_path: Path) -> None:
    # The worker dies after its job was killed; Dask's run of the task on another worker must
    # measure the candidate, not return the interruption.
    store = OutcomeStore(str(tmp_path / "outcomes"))
    (candidate,) = _candidates(1)
    oracle = _Interrupting()
    (first,) = evaluate_batch.fn([candidate], oracle, store=store)
    assert first["failure"][0] == "oracles.errors:EvaluationInterrupted" and first["failure"][2] is True
    assert store.get(candidate.id) is None
    (again,) = evaluate_batch.fn([candidate], oracle, store=store)
    assert again["result"]["measurements"]["y"]["value"] == 1.0 and oracle.calls == 2
    assert store.get(candidate.id) == again


class _Lost:
    """A future whose task Dask gave up on: its workers were lost (``KilledWorker``)."""

    def result(self) -> object:
        class KilledWorker(Exception):
            pass

        raise KilledWorker("Attempted to run task evaluate-batch-1 on 1 different workers")


def test_a_task_dask_gave_up_on_settles_as_a_retryable_interruption() -> None:
    with pytest.raises(EvaluationInterrupted, match=r"^interrupted: the workers running") as raised:
        _settle(_Lost(), 0)  # type: ignore[arg-type]
    assert raised.value.retryable
