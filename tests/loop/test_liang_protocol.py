"""Liang et al. (2021) protocol on crossed barrel with the real loop and the dataset-backed lab.

2 random initial designs, batch 1, UCB with beta = 1 (mean + 1 std), the pool scaled once;
10 seeds. Random search needs 479 experiments to find 80% of the top-5% designs; the
issue's bar for the loop is a median of at most 150.

The seeds are independent campaigns, each with its own ledger, so they run in two worker
processes: the GP fits of a batch-1 loop use one core each.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from loop.campaign import Campaign
from loop.config import parse_config
from loop.ledger import Ledger

SEEDS = range(10)
CAP = 200  # a campaign that has not reached 80% by then counts as CAP + 1


def _experiments_to_top80(csv: Path, seed: int, ledger_path: Path) -> int:
    import torch

    torch.set_num_threads(1)  # one campaign per core
    config = parse_config(
        {
            "campaign": {"name": f"crossed-barrel-{seed}", "seed": seed},
            "space": {"pool": {"path": str(csv), "inputs": ["n", "theta", "r", "t"]}},
            "objectives": [{"name": "toughness", "direction": "maximize"}],
            "acquisition": {"type": "ucb", "beta": 1.0, "batch_size": 1, "initial_designs": 2},
            "oracle": {"type": "dataset", "path": str(csv), "mode": "mean"},
            "stopping": {"max_experiments": CAP},
        }
    )
    table = pd.read_csv(csv)
    means = table.groupby(["n", "theta", "r", "t"])["toughness"].mean()
    n_good = math.ceil(0.05 * len(means))
    threshold = means.sort_values(ascending=False).iloc[n_good - 1]
    good = {tuple(float(v) for v in k) for k, value in means.items() if value >= threshold}
    campaign = Campaign(config, ledger=Ledger(ledger_path))
    found = 0
    while campaign.stop_reason() is None:
        campaign.run_cycle()
        evaluations = campaign.ledger.evaluations(campaign.id)
        found = sum(tuple(float(e.params[k]) for k in ("n", "theta", "r", "t")) in good for e in evaluations)
        if found >= 0.8 * n_good:
            return len(evaluations)
    return CAP + 1


@pytest.mark.slow
def test_median_experiments_to_find_80_percent_of_top5(shared_data: Path, tmp_path: Path) -> None:
    csv = shared_data / "crossed_barrel" / "crossed_barrel.csv"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        counts = list(
            pool.map(
                _experiments_to_top80,
                [csv] * len(SEEDS),
                SEEDS,
                [tmp_path / f"ledger-{seed}.db" for seed in SEEDS],
            )
        )
    median = statistics.median(counts)
    print(f"experiments to Top% 0.8 per seed: {counts}; median {median}")
    assert median <= 150, counts
    assert median < 479 / 2, "far better than random search"
