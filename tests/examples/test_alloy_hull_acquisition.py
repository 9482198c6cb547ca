"""The alloy example driven by the hull-aware acquisition, on a tiny budget."""

from __future__ import annotations

from pathlib import Path

from loop.campaign import Campaign
from loop.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "alloy_discovery"


def test_hull_probability_campaign_runs_and_records_its_proposals(tmp_path: Path) -> None:
    config = load_config(
        EXAMPLE / "campaign.toml",
        {
            "campaign.ledger": str(tmp_path / "campaign.db"),
            "oracle.workdir": str(tmp_path / "runs"),
            "space.generator.cache": str(tmp_path / "candidates.json"),
            "space.generator.max_atoms": 4,
            "acquisition.type": "hull_probability",
            "acquisition.within_mev": 5.0,
            "acquisition.batch_size": 3,
            "acquisition.initial_designs": 6,
            "stopping.max_experiments": 12,
        },
    )
    campaign = Campaign.open(config)
    try:
        report = campaign.run()
        cycles = campaign.ledger.cycles(campaign.id)
        done = campaign.ledger.evaluations(campaign.id, ["done"])
    finally:
        campaign.close()
    assert report.experiments == 12 and len(done) == 12
    assert [c.acquisition for c in cycles] == ["random", "hull_probability", "hull_probability"]
    for cycle in cycles[1:]:
        assert cycle.chosen is not None and len(cycle.chosen) == 3
        for proposal in cycle.chosen:
            assert 0.0 <= proposal["acquisition_value"] <= 1.0
            assert proposal["mean"] is not None and proposal["std"] is not None
