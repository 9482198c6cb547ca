"""The end-of-run report of a Pareto campaign shows its front and hypervolume per cycle."""

from __future__ import annotations

from pathlib import Path

from flows.artifacts import report_markdown
from loop.campaign import Campaign
from loop.report import campaign_status
from tests.loop.test_labgrade import PARETO, RIDGE, config_text, write


def _report(tmp_path: Path, objectives: str) -> tuple[str, dict[str, object]]:
    campaign = Campaign.from_file(write(tmp_path, config_text(tmp_path, objectives, batch_size=2, budget=8)))
    try:
        report = campaign.run()
        return report_markdown(campaign, report, None), campaign_status(campaign.ledger, campaign.name)
    finally:
        campaign.close()


def test_the_report_shows_the_front_and_the_hypervolume_of_every_cycle(tmp_path: Path) -> None:
    markdown, status = _report(tmp_path, PARETO)
    pareto = status["pareto"]
    assert isinstance(pareto, dict)
    assert f"## Pareto front: hypervolume {pareto['hypervolume']:.4g}" in markdown
    for point in pareto["front"]:  # every non-dominated result, with its values
        assert f"| {point['candidate_id'][:10]} | {point['f1']:.4g} | {point['f2']:.4g} |" in markdown
    for h in pareto["hypervolume_by_cycle"]:
        assert f"| {h['cycle']} | {h['hypervolume']:.4g} |" in markdown
    assert len(pareto["hypervolume_by_cycle"]) >= 3
    assert "![Pareto front and hypervolume per cycle](data:image/png;base64," in markdown


def test_a_single_objective_report_has_no_pareto_section(tmp_path: Path) -> None:
    markdown, status = _report(tmp_path, RIDGE)
    assert "pareto" not in status and "Pareto front" not in markdown
