"""The on-the-fly MD flow: a tiny Cu run whose oracle fails now and then, retried or recorded.

The DFT runner's job processes import this module to build :class:`FlakyEMT`, once per job,
so it imports only what the calculator needs at the top; the flow and Prefect's client are
imported inside the tests. The jobs import it as ``test_otf`` from this folder, put on their
path, and are spawned: mace-torch installs a ``tests`` package of its own that hides ours from
a fresh interpreter.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

import pytest
from ase import Atoms
from ase.calculators.calculator import CalculationFailed, all_changes
from ase.calculators.emt import EMT

RUN = "cu-flaky"


class FlakyEMT(EMT):
    """EMT whose every 5th job fails as an unconverged SCF (retryable) and every 7th, otherwise,
    with a calculator error (not retryable).

    Jobs are counted across processes in ``<oracle workdir>/flaky-calls``, one line per job:
    its number and its folder (a frame's folder, ``<folder>-2`` for its retry, or a reference).
    """

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        call = self.__dict__.get("call")
        if call is None:
            call = self.call = _count_job(Path(self.directory))
        if outcome(call) == "scf":
            raise CalculationFailed(f"SCF did not converge (flaky job {call})")
        if outcome(call) == "error":
            raise RuntimeError(f"flaky job {call} broke")
        super().calculate(atoms, properties or ["energy"], system_changes)


def outcome(call: int) -> str:
    """What :class:`FlakyEMT` does on its ``call``-th job."""
    return "scf" if call % 5 == 0 else "error" if call % 7 == 0 else "ok"


def _count_job(folder: Path) -> int:
    with open(folder.parent / "flaky-calls", "a+") as journal:
        fcntl.flock(journal, fcntl.LOCK_EX)
        journal.seek(0)
        call = len(journal.read().splitlines()) + 1
        journal.write(f"{call} {folder.name}\n")
    return call


def jobs(workdir: Path) -> list[tuple[int, str]]:
    """``(job number, folder name)`` of every job :class:`FlakyEMT` ran."""
    lines = (workdir / "flaky-calls").read_text().splitlines()
    return [(int(n), folder) for n, folder in (line.split() for line in lines)]


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> str:
    """The import path of :class:`FlakyEMT` for the job processes."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return f"{Path(__file__).stem}:{FlakyEMT.__name__}"


def write_config(
    tmp_path: Path, calculator: str, walkers: int = 2, steps: int = 40, max_calls: int = 12
) -> Path:
    """A 7-atom Cu cell with a vacancy, ``walkers`` short heating walkers, a 2-member committee,
    and ``calculator`` as the oracle."""
    walker_tables = "".join(
        f'[[walkers]]\nname = "w{i}"\nsteps = {steps}\ntemperature_k = [300, 600]\nseed = {i + 1}\n\n'
        for i in range(walkers)
    )
    path = tmp_path / "otf.toml"
    path.write_text(
        f'[run]\nname = "{RUN}"\nledger = "otf.db"\nworkdir = "runs"\n\n'
        '[structure]\nelement = "Cu"\na = 3.61\nrepeat = [2, 1, 1]\nvacancies = 1\n\n'
        + walker_tables
        + "[committee]\nsize = 2\nworkers = 1\nchannels = 8\nepochs = 10\nmin_steps = 4\n\n"
        f"[otf]\ninitial_frames = 4\nstop_after_calls = 0\nmin_steps_between_calls = 1\n"
        "initial_threshold_ev_per_a = 0.001\ncalibrate = false\n"
        f"max_oracle_calls = {max_calls}\n\n"
        f'[oracle]\ncalculator = "{calculator}"\nwall_time_s = 60\nstart_method = "spawn"\n'
        'retryable = ["scf_not_converged"]\n'
    )
    return path


def _rows(table: Any) -> list[dict[str, Any]]:
    import json

    return json.loads(table) if isinstance(table, str) else table  # type: ignore[no-any-return]


def test_flow_labels_retries_and_records_failures_once_and_publishes_each_round(
    tmp_path: Path, flaky: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from flows.artifacts import artifact_key
    from flows.otf import otf_md_flow
    from loop.ledger import Ledger

    path = write_config(tmp_path, flaky)
    state = otf_md_flow(str(path), retries=1, return_state=True)
    report = state.result()

    with Ledger(tmp_path / "otf.db") as ledger:
        evaluations = ledger.evaluations(int(ledger.campaign(RUN)["id"]))
    done = [e for e in evaluations if e.status == "done"]
    failed = [e for e in evaluations if e.status == "failed"]
    assert len(done) + len(failed) == len(evaluations), "nothing is left in flight"
    assert (report.oracle_calls, report.failed_calls, report.dataset_size) == (
        len(evaluations),
        len(failed),
        len(done),
    )
    assert len({e.candidate_id for e in evaluations}) == len(evaluations)

    # Every ledger row is one frame; its attempts are its job folder and the retry's ``-2``.
    ran = jobs(tmp_path / "runs" / RUN)
    attempts = {
        e.candidate_id: [n for n, folder in ran if folder in (e.candidate_id, f"{e.candidate_id}-2")]
        for e in evaluations
    }
    references = [n for n, folder in ran if folder.startswith("reference-")]
    assert len(ran) == len(references) + sum(len(a) for a in attempts.values())
    for evaluation in done:
        *retried, last = attempts[evaluation.candidate_id]
        assert outcome(last) == "ok" and all(outcome(n) == "scf" for n in retried)
    for evaluation in failed:  # a retryable failure is retried once; the others never are
        *retried, last = attempts[evaluation.candidate_id]
        assert all(outcome(n) == "scf" for n in retried)
        if outcome(last) == "error":
            assert "calculator_error" in (evaluation.error or "") and evaluation.retryable is False
        else:
            assert len(retried) == 1 and "scf_not_converged" in (evaluation.error or "")
            assert evaluation.retryable is True
    assert failed, "a frame failed for good"
    assert any(len(attempts[e.candidate_id]) == 2 for e in done), "a retried frame was labelled"
    first_failure = min(e.id for e in failed)
    assert any(e.id > first_failure for e in done), "the run went on labelling after a failure"
    assert report.md_steps >= 2 * 40 and not report.lost_walkers

    rounds, summary = artifact_key(RUN, "round"), artifact_key(RUN, "report")
    with get_client(sync_client=True) as client:
        flow_run_id = state.state_details.flow_run_id
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[rounds, summary]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.name == RUN
    by_key: dict[str, list[Any]] = {}
    for artifact in sorted(artifacts, key=lambda a: a.created):
        by_key.setdefault(artifact.key, []).append(artifact)
    assert len(by_key[rounds]) == report.rounds, "one round table per retraining round"
    table = _rows(by_key[rounds][-1].data)
    assert [row["round"] for row in table] == list(range(1, report.rounds + 1))
    last = table[-1]
    assert (last["MD steps"], last["oracle calls"], last["dataset size"]) == (
        report.md_steps,
        report.oracle_calls,
        report.dataset_size,
    )
    assert sum(row["failed"] for row in table) == len(failed)
    assert sum(row["labelled"] for row in table) == len(done)
    assert last["threshold (eV/Å)"] == pytest.approx(report.threshold, abs=1e-6)
    assert any(row["validation force MAE (eV/Å)"] is not None for row in table)
    (markdown,) = [a.data for a in by_key[summary]]
    assert f"{report.oracle_calls} oracle calls" in markdown and f"{len(failed)} failed" in markdown
    assert "calculator_error" in markdown
    assert report.final_fit_frames == report.dataset_size, "refitted from scratch once the walkers finished"
    assert f"Final fit: refitted from scratch on {report.dataset_size} frames" in markdown

    again = otf_md_flow(str(path), retries=1)  # the lock was released; nothing is left to do
    assert again.resumed_from_steps == {"w0": 40, "w1": 40}
    assert (again.rounds, again.oracle_calls, again.failed_calls, again.dataset_size) == (
        report.rounds,
        report.oracle_calls,
        report.failed_calls,
        report.dataset_size,
    )

    labels = [t for t in task_runs if t.name.startswith("label-")]
    assert len(labels) == len(evaluations), "one label task per frame, however often it ran"
    assert sum(t.run_count for t in labels) == sum(len(a) for a in attempts.values())
    assert len([t for t in task_runs if t.name.startswith("retrain-")]) == report.rounds
    assert {t.name for t in task_runs if t.name.startswith("advance-")} >= {
        f"advance-{artifact_key(RUN, 'r2')}-w0",
        f"advance-{artifact_key(RUN, 'r2')}-w1",
    }


def test_flow_leaves_a_run_alone_while_another_holds_its_lock(tmp_path: Path, flaky: str) -> None:
    from flows.otf import otf_md_flow
    from loop.lease import CampaignBusy, CampaignLease
    from loop.ledger import Ledger

    path = write_config(tmp_path, flaky)
    with Ledger(tmp_path / "otf.db") as ledger, CampaignLease(ledger, RUN, "another run"):
        with pytest.raises(CampaignBusy, match="another run"):
            otf_md_flow(str(path))
        assert ledger.campaign_names() == []
    assert not (tmp_path / "runs").exists()
