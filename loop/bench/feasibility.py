"""``alloop bench feasibility``: learning where a lab fails against dropping failures.

An emulated lab (:func:`~loop.bench.labs.ridge` on ``[0, 1]²``, noise 0.01) hides a failure
region of 40% of the square next to its optimum (:func:`~loop.bench.labs.in_failure_region`);
every evaluation there fails for good. Two arms run the same campaign (qLogNEI, 4 random
designs, batches of 1) with the same seeds: "drop failures" (today's loop: failures are
left out of the GP's data) and "learned" (``[feasibility] learn = true``, floor 0.05).
Reported per arm: wasted (failed) evaluations and the best feasible true value found.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from loop.bench.labs import FailureRegionLab, in_failure_region, ridge
from loop.build import build_oracle, build_space
from loop.campaign import Campaign
from loop.config import parse_config
from loop.report import campaign_status


def ridge_config(name: str, seed: int, budget: int, ledger: str, learn: bool) -> dict[str, Any]:
    """The benchmark's campaign, as a configuration dictionary."""
    return {
        "campaign": {"name": name, "seed": seed, "ledger": ledger},
        "space": {
            "parameters": [
                {"name": n, "type": "continuous", "lower": 0.0, "upper": 1.0} for n in ("x1", "x2")
            ]
        },
        "objectives": [{"name": "y"}],
        "acquisition": {
            "type": "qlognei",
            "initial_designs": 4,
            "num_restarts": 2,
            "raw_samples": 64,
            "mc_samples": 32,
            "max_iterations": 30,
        },
        "oracle": {"type": "emulator", "function": "loop.bench.labs:ridge", "noise_sd": 0.01},
        "stopping": {"max_experiments": budget},
        **({"feasibility": {"learn": True, "floor": 0.05}} if learn else {}),
    }


def run_arm(seed: int, budget: int, learn: bool, folder: Path) -> dict[str, Any]:
    """One campaign: its wasted evaluations and best feasible true value."""
    name = f"{'learned' if learn else 'drop'}-{seed}"
    config = parse_config(ridge_config(name, seed, budget, str(folder / f"{name}.db"), learn))
    space, _ = build_space(config)
    campaign = Campaign.open(config, oracle=FailureRegionLab(build_oracle(config, space), in_failure_region))
    try:
        campaign.run()
        status = campaign_status(campaign.ledger, name)
        done = campaign.ledger.evaluations(campaign.id, ["done"])
    finally:
        campaign.close()
    return {
        "wasted": status["wasted_evaluations"],
        "best_true": max((ridge(e.params)["y"] for e in done), default=float("nan")),
    }


def run(
    seeds: int, budget: int, on_run: Callable[[str, int, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Both arms over ``seeds`` seeds, and the decision rule of benchmarks/RESULTS.md."""
    arms: dict[str, list[dict[str, Any]]] = {"drop_failures": [], "learned": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(seeds):
            for arm, learn in (("drop_failures", False), ("learned", True)):
                result = run_arm(seed, budget, learn, Path(folder))
                arms[arm].append(result)
                if on_run is not None:
                    on_run(arm, seed, result)
    summary = {
        arm: {
            "wasted_total": sum(r["wasted"] for r in runs),
            "wasted_per_campaign": [r["wasted"] for r in runs],
            "best_true_median": median(r["best_true"] for r in runs),
            "best_true": [round(r["best_true"], 4) for r in runs],
        }
        for arm, runs in arms.items()
    }
    drop, learned = summary["drop_failures"], summary["learned"]
    fewer = 1 - learned["wasted_total"] / max(drop["wasted_total"], 1)
    return {
        "benchmark": "feasibility",
        "seeds": seeds,
        "budget": budget,
        "failure_region_fraction": 0.40,
        "arms": summary,
        "fewer_failed_fraction": fewer,
        "goal_met": fewer >= 0.30 and learned["best_true_median"] >= drop["best_true_median"] - 0.02,
        "seconds": round(time.perf_counter() - started, 1),
    }
