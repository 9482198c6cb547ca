"""How often the alloy example finds the whole EMT hull, over seeds and acquisitions.

The example (``examples/alloy_discovery/campaign.toml``) runs as its file says (batches of 16,
20 random designs, budget 269 = a quarter of the pool) against a lookup oracle of the
exhaustive EMT relaxations (:func:`loop.bench.near_hull.ground_truth`), once per seed and
acquisition; only ``campaign.seed`` and ``acquisition.type`` change. A run is judged on the
true hull structures and the best 1% it left unmeasured.

    python -m loop.bench.alloy_hull --seeds 10 --acquisition thompson --workdir /tmp/near-hull
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from loop.bench.near_hull import EXAMPLE, ground_truth, run_against_truth, truth_points
from loop.config import CampaignConfig, load_config
from loop.stability import best_fraction, on_hull


def example_config(workdir: Path, seed: int, acquisition: str) -> CampaignConfig:
    """The alloy example with its seed and acquisition type replaced."""
    name = f"alloy-hull-{acquisition}-{seed}"
    return load_config(
        EXAMPLE,
        {
            "campaign.name": name,
            "campaign.seed": seed,
            "campaign.ledger": str(workdir / f"{name}.db"),
            "oracle.workdir": str(workdir / "runs"),
            "space.generator.cache": str(workdir / "candidates.json"),
            "acquisition.type": acquisition,
        },
    )


def run_seed(workdir: Path, seed: int, acquisition: str) -> dict[str, Any]:
    """One campaign of the example: the true hull structures and best 1% it did not measure."""
    config = example_config(workdir, seed, acquisition)
    truth = ground_truth(config, workdir / "truth.json")
    points = truth_points(truth)
    stable, best = on_hull(points), best_fraction(points, 0.01)
    report, done, seconds = run_against_truth(config, truth)
    return {
        "seed": seed,
        "acquisition": acquisition,
        "experiments": report.experiments,
        "budget": config.stopping.max_experiments,
        "hull_true": len(stable),
        "hull_missed": sorted(stable - done),
        "best_1pct_missed": sorted(best - done),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--acquisition", default="thompson", choices=["thompson", "hull_thompson"])
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        print(json.dumps(run_seed(args.workdir.resolve(), seed, args.acquisition)), flush=True)


if __name__ == "__main__":
    main()
