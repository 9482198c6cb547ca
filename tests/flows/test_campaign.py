"""The campaign flow: same ledger as the engine-free loop, artifacts, names, retries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows.artifacts import artifact_key
from flows.campaign import campaign_flow
from loop.campaign import Campaign
from loop.config import load_config
from oracles.simulated import read_journal
from tests.flows.helpers import contents, evaluations


def test_flow_matches_the_engine_free_loop_and_publishes_artifacts(
    flow_campaign: Callable[..., Path], tmp_path: Path
) -> None:
    oracle = "failure_probability = 0.25\ncapacity = 2"
    plain = flow_campaign(name="plain.toml", ledger="plain.db", max_experiments=8, oracle_extra=oracle)
    flowed = flow_campaign(name="flowed.toml", ledger="flowed.db", max_experiments=8, oracle_extra=oracle)
    campaign = Campaign(load_config(plain))
    reference = campaign.run()
    campaign.close()

    state = campaign_flow(str(flowed), return_state=True)
    report = state.result()

    assert report.cycles_run == reference.cycles_run == 3
    assert report.stop_reason == reference.stop_reason
    assert contents(flowed) == contents(plain)
    assert any(e.status == "failed" for e in evaluations(flowed)), "the seed gives failures to compare"

    keys = [artifact_key("branin", kind) for kind in ("batch", "progress", "report")]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=keys), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])
            )
        )
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    by_key = {}
    for artifact in sorted(artifacts, key=lambda a: a.created):
        by_key.setdefault(artifact.key, []).append(artifact)
    assert len(by_key[keys[0]]) == 3, "one batch table per cycle"
    last_batch = evaluations(flowed)[-2:]
    table = by_key[keys[0]][-1].data
    assert [row["candidate"] for row in _rows(table)] == [e.candidate_id for e in last_batch]
    assert all(row["y mean"] is not None and row["acquisition value"] is not None for row in _rows(table))
    assert float(by_key[keys[1]][-1].data) == 100.0
    markdown = by_key[keys[2]][-1].data
    assert "Best so far" in markdown and "data:image/png;base64," in markdown
    assert "| 2 | 2 |" in markdown, "the per-cycle summary lists cycle 2"
    assert "## Calibration" in markdown and "| y | predictive |" in markdown
    # The default recalibration: the stopping rules' std is scaled (by 1 below ten z-scores).
    stopping = "The stopping rules use the predictive std (with the fitted noise), recalibrated by scale"
    assert stopping in markdown
    assert "the acquisition uses the latent std (the model's own), not recalibrated" in markdown
    assert "![reliability diagram](data:image/png;base64," in markdown

    assert flow_run.name == "branin/cycles-0-2"
    names = Counter(t.name.rsplit("-", 1)[0] for t in task_runs if t.name.startswith("evaluate-"))
    assert names == {"evaluate-branin-c0": 4, "evaluate-branin-c1": 2, "evaluate-branin-c2": 2}
    assert {"fit-branin-c1", "propose-branin-c2", "record-branin-c2"} <= {t.name for t in task_runs}


def _rows(table: object) -> list[dict[str, object]]:
    import json

    return json.loads(table) if isinstance(table, str) else table  # type: ignore[return-value]


def test_retryable_failures_are_retried_and_recorded_once(
    flow_campaign: Callable[..., Path], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    path = flow_campaign(
        max_experiments=6,
        oracle_extra=f'failure_probability = 0.5\njournal = "{journal}"',
        execution="retries = 2",
    )
    campaign_flow(str(path))

    attempts = Counter(e["candidate"] for e in read_journal(journal) if e["event"] == "started")
    failed_attempts = Counter(e["candidate"] for e in read_journal(journal) if e["event"] == "failed")
    ledger = {e.candidate_id: e for e in evaluations(path)}
    assert set(attempts) == set(ledger) and len(ledger) == 6
    assert max(attempts.values()) > 1, "the seed gives failures to retry"
    for candidate, evaluation in ledger.items():
        if evaluation.status == "done":
            assert failed_attempts[candidate] == attempts[candidate] - 1
        else:
            assert attempts[candidate] == 3 and "attempt 3" in (evaluation.error or "")
