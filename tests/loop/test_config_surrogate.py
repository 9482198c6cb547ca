"""``[surrogate]``: the recalibration's defaults by what a file names, and the campaign identity
that keeps every file written before the default changed on its hash."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from loop.campaign import Campaign
from loop.config import CampaignConfig, load_config
from loop.config_surrogate import SurrogateSection
from loop.errors import ConfigError
from loop.report import campaign_calibration
from tests.helpers import write_fidelity_campaign
from tests.loop.test_config import MINIMAL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: Hashes of :data:`MINIMAL` with these ``[surrogate]`` lines, computed before a GP's default
#: became ``"scale"`` on the stopping rules (main at 54be807).
HASHES_BEFORE = {
    "": "4db7cdf6f163f762",
    'calibration = "none"': "4db7cdf6f163f762",
    'calibration = "scale"': "8e20767dc4bc6320",
    'calibration = "scale"\ncalibration_applies_to = "all"': "8e20767dc4bc6320",
    'calibration = "scale"\ncalibration_applies_to = "stopping"': "d8bdc9cc6d72e41e",
    'calibration = "conformal"': "423d56e2ec14f637",
}

#: Hashes of the example campaigns at the same commit: none names a calibration key (the GPs
#: then recalibrate by default); ``gpaw_prerelax`` is a committee. The alloy example has since
#: changed its acquisition (``hull_thompson``), so it is hashed with the one it had then.
EXAMPLE_OVERRIDES = {"alloy_discovery/campaign.toml": {"acquisition.type": "thompson"}}
EXAMPLE_HASHES_BEFORE = {
    "alloy_discovery/campaign.toml": "28e6f4e9b2a78f68",
    "alloy_discovery/campaign_gpaw.toml": "0ad45a4d3b19cfa2",
    "simulated_lab/campaign.toml": "4ae49b3c146cb32d",
    "gpaw_prerelax/campaign.toml": "a798566a3cab2089",
    "robot_lab/campaign.toml": "52c171fbcf7c7aa9",
}


def _minimal(tmp_path: Path, surrogate: str, name: str = "campaign.toml") -> CampaignConfig:
    path = tmp_path / name
    path.write_text(MINIMAL + (f"\n[surrogate]\n{surrogate}\n" if surrogate else ""))
    return load_config(path)


@pytest.mark.parametrize(
    ("surrogate", "calibration", "applies_to"),
    [
        ("", "scale", "stopping"),
        ('kernel = "rbf"', "scale", "stopping"),
        ('calibration = "scale"', "scale", "all"),
        ('calibration = "conformal"', "conformal", "all"),
        ('calibration = "none"', "none", "all"),
        ('calibration_applies_to = "stopping"', "scale", "stopping"),
        ('calibration_applies_to = "all"', "scale", "all"),
        ('calibration = "conformal"\ncalibration_applies_to = "stopping"', "conformal", "stopping"),
    ],
)
def test_a_gp_recalibrates_as_its_file_names(
    tmp_path: Path, surrogate: str, calibration: str, applies_to: str
) -> None:
    section = _minimal(tmp_path, surrogate).surrogate
    assert (section.calibration, section.calibration_applies_to) == (calibration, applies_to)


def test_naming_a_scope_without_a_recalibration_is_still_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"surrogate\.calibration_applies_to: .*applies only with calib"):
        _minimal(tmp_path, 'calibration = "none"\ncalibration_applies_to = "stopping"')


@pytest.mark.parametrize("surrogate", list(HASHES_BEFORE))
def test_every_file_keeps_the_hash_it_had_before_the_default_changed(tmp_path: Path, surrogate: str) -> None:
    assert _minimal(tmp_path, surrogate).hash == HASHES_BEFORE[surrogate]


def test_the_default_recalibration_is_recorded_as_none_and_stored_as_it_is(tmp_path: Path) -> None:
    default = _minimal(tmp_path, "")
    assert default.identity() == _minimal(tmp_path, 'calibration = "none"', "none.toml").identity()
    assert default.identity()["surrogate"]["calibration"] == "none"
    assert "calibration_applies_to" not in default.identity()["surrogate"]
    # The ledger stores the configuration as it runs: the reports say what the stopping rules used.
    stored = default.model_dump(mode="json")["surrogate"]
    assert (stored["calibration"], stored["calibration_applies_to"]) == ("scale", "stopping")
    assert SurrogateSection().calibration == "scale"


@pytest.mark.parametrize("example", list(EXAMPLE_HASHES_BEFORE))
def test_the_examples_keep_their_hash(example: str) -> None:
    config = load_config(EXAMPLES / example, EXAMPLE_OVERRIDES.get(example, {}))
    assert config.hash == EXAMPLE_HASHES_BEFORE[example]


def test_a_committee_takes_no_recalibration(tmp_path: Path) -> None:
    committee = load_config(EXAMPLES / "gpaw_prerelax/campaign.toml").surrogate
    assert committee.type == "committee"
    assert committee.calibration == "none"
    assert "calibration_applies_to" not in committee.model_dump(mode="json")
    assert committee.identity() == committee.model_dump(mode="json")
    with pytest.raises(ValueError, match=r"calibration_applies_to\n.*applies only to type = 'gp'"):
        SurrogateSection.model_validate({"type": "committee", "calibration_applies_to": "stopping"})


def test_a_multi_fidelity_campaign_is_not_recalibrated_unless_named(tmp_path: Path) -> None:
    path = write_fidelity_campaign(tmp_path)
    config = load_config(path)
    assert (config.surrogate.calibration, config.surrogate.calibration_applies_to) == ("none", "all")
    assert config.hash == "9ee4423dbae77f69"  # as before the default changed
    for named in ('calibration = "scale"', 'calibration_applies_to = "stopping"'):
        path = write_fidelity_campaign(tmp_path, extra=f"[surrogate]\n{named}\n")
        with pytest.raises(ConfigError, match=r"surrogate\.calibration: not available in a multi-fidelity"):
            load_config(path)


def test_a_campaign_with_the_default_resumes_a_ledger_written_without_a_recalibration(
    branin_config: Callable[..., Path],
) -> None:
    # A file that names calibration = "none" has the identity of a file written before the
    # default changed, and so writes the ledger such a file wrote.
    fields: dict[str, object] = {"batch_size": 4, "acquisition": "ucb"}
    before = branin_config(
        "before.toml", max_experiments=8, stopping_extra='[surrogate]\ncalibration = "none"', **fields
    )
    campaign = Campaign.from_file(before)
    campaign.run()
    assert campaign.std_scales() == {"y": 1.0}
    campaign.close()
    resumed = Campaign.from_file(branin_config("after.toml", max_experiments=20, **fields))
    assert resumed.config.surrogate.calibration == "scale" and resumed.id == campaign.id
    resumed.run()
    assert len(resumed.ledger.evaluations(resumed.id, ["done"])) == 20
    # The stopping rules judged by the model's own std until ten z-scores were in (the first
    # three model-chosen batches), then by the recalibrated one.
    scales = [p.prediction.std_scale for p in resumed.ledger.predictions(resumed.id)]
    assert scales[:12] == [1.0] * 12 and len(scales) == 16
    assert len(set(scales[12:])) == 1 and scales[-1] != 1.0
    # The report reads the configuration the campaign resumed with.
    report = campaign_calibration(resumed.ledger, resumed.name)
    assert (report["method"], report["applies_to"]) == ("scale", "stopping")
    assert report["objectives"]["y"]["next_std_scale"] == resumed.std_scales()["y"]
    resumed.close()
