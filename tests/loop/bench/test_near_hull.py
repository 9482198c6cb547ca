"""The near-hull bench's campaigns: the alloy example with the rule, its inputs chosen by name."""

from __future__ import annotations

from pathlib import Path

from loop.bench.near_hull import example_config


def test_a_descriptor_variant_is_its_own_campaign_with_its_own_ledger(tmp_path: Path) -> None:
    pairs = example_config(tmp_path, 3, "default", 2.0, 2.0)
    chgnet = example_config(tmp_path, 3, "default", 2.0, 2.0, descriptors="chgnet")

    assert pairs.surrogate.descriptors == "pairs" and chgnet.surrogate.descriptors == "chgnet"
    assert chgnet.campaign.name == "near-hull-default-2-3-chgnet" != pairs.campaign.name
    assert chgnet.ledger_location != pairs.ledger_location
    for config in (pairs, chgnet):
        assert config.stopping.near_hull_mev == 2.0 and config.acquisition.batch_size == 4
        assert config.acquisition.type == "thompson" and config.campaign.seed == 3
