"""On-the-fly training against the oracle alone and two baselines (``alloop bench otf``).

One protocol (the walkers of an on-the-fly config: start, thermostat, ramp, seed), four variants:

* ``ground_truth`` (a): the walkers run on the oracle's calculator itself, every step an oracle
  evaluation. Every ``HELD_OUT_EVERY``-th frame, with its energy and forces, is held out to test the
  committees of the other variants; its radial distribution function (RDF) is the reference.
* ``calibrated`` (b): the config's run as it is (:func:`~loop.otf.build_otf_run`).
* ``fixed_threshold`` (c): the same with ``calibrate = False`` (the initial threshold holds)
  and, when (b) ran, its oracle budget: at most as many calls as (b) made.
* ``every_kth`` (d): label every k-th step (``label_every``), k chosen so that it makes at least
  as many oracle calls as (b), and as few as that allows.

Each committee variant runs in its own folder, with its own ledger, oracle and committee. Every
``CHECK_EVERY``-th MD step its frame goes to the oracle's calculator directly (outside the oracle,
not counted as a call): a *miss* is a checked step whose force error, measured as the loop measures
it against its tolerance (:func:`~surrogates.mlip.force_error`), exceeds the tolerance while the loop
did not call the oracle on it. At the end, the final committee's force RMSE (all components)
and energy MAE (per atom) are measured on (a)'s held-out frames (with ``final_fit``, the
potential refitted from scratch on the variant's frames), and the RDF of its trajectory's second
half is compared with (a)'s. The *in-run* RMSE and MAE predict each held-out frame with the
committee that drove the same walker at the same step: how good the potential the MD ran on was.

The RDF difference is ``sum |g - g_a| / sum g_a`` over bins of ``RDF_BIN_A`` up to ``RDF_MAX_A``
(every periodic image counts, so a small cell is fine); ``rdf_noise_floor`` is the same
difference between (a) and an oracle-only replica whose walkers use other seeds: what
thermal noise alone gives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from loop.bench.otf.trajectory import CHECK_EVERY, HELD_OUT_EVERY, RDF_BIN_A, RDF_MAX_A, rdf_difference
from loop.bench.otf.variants import every_kth_interval, run_committee_variant, run_ground_truth
from loop.errors import ConfigError
from loop.otf import RoundReport, load_otf_config
from loop.otf.reports import pooled_force_coverage

VARIANTS = ("ground_truth", "calibrated", "fixed_threshold", "every_kth")
"""The variants, in the order they run ((d) needs (b)'s calls)."""


def acceptance(variants: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's acceptance criteria on the calibrated loop (``None``: a variant it needs is missing).

    ``beats_fixed_threshold`` / ``beats_every_kth``: a lower held-out force RMSE of the final
    potential than that baseline with at most its oracle calls; ``beats_baselines``: both;
    ``..._in_run``: the same for the potential that drove the MD (``in_run_force_rmse_ev_per_a``).
    """
    b = variants.get("calibrated") or {}

    def beats(name: str, in_run: bool) -> bool | None:
        other = variants.get(name)
        if not b or other is None:
            return None
        key = "in_run_force_rmse_ev_per_a" if in_run else "force_rmse_ev_per_a"
        return bool(b[key] < other[key] and b["oracle_calls"] <= other["oracle_calls"])

    return _criteria(b.get("oracle_step_fraction"), b.get("force_rmse_ev_per_a"), b.get("miss_rate"), beats)


def _criteria(
    fraction: float | None,
    rmse: float | None,
    miss: float | None,
    beats: Callable[[str, bool], bool | None],
) -> dict[str, bool | None]:
    """The criteria from the calibrated loop's step fraction, force RMSE and miss rate, and
    ``beats(baseline, in_run)``; ``None`` where a figure or a variant is missing."""
    fixed, kth = beats("fixed_threshold", False), beats("every_kth", False)
    return {
        "oracle_step_fraction_at_most_2pct": None if fraction is None else fraction <= 0.02,
        "force_rmse_at_most_0.1_ev_per_a": None if rmse is None else rmse <= 0.1,
        "miss_rate_at_most_2pct": None if miss is None else miss <= 0.02,
        "beats_fixed_threshold": fixed,
        "beats_every_kth": kth,
        "beats_baselines": None if fixed is None or kth is None else fixed and kth,
        "beats_fixed_threshold_in_run": beats("fixed_threshold", True),
        "beats_every_kth_in_run": beats("every_kth", True),
    }


def run_otf_benchmark(
    config_path: str | Path,
    workdir: str | Path | None = None,
    steps: int | None = None,
    variants: Sequence[str] = VARIANTS,
    label_every: int | None = None,
    on_variant: Callable[[str, dict[str, Any]], None] | None = None,
    on_round: Callable[[str, RoundReport], None] | None = None,
    seed_offset: int = 0,
) -> dict[str, Any]:
    """Run the benchmark; see the module docstring.

    Args:
        config_path: An on-the-fly TOML file (``examples/otf_md/otf.toml``).
        workdir: Where each variant's folder goes (``<workdir>/<variant>``, which must not exist; its
            numbers are written to ``result.json`` there as it finishes); default: a temporary folder,
            removed at the end.
        steps: Override every walker's ``steps`` (a quick run).
        variants: Which of :data:`VARIANTS` to run; the ground truth always runs (the others are
            measured against it).
        label_every: k of ``every_kth`` (default: matched to ``calibrated``'s calls, which must then run).
        on_variant: Called with each variant's name and numbers as it finishes.
        on_round: Called with a variant's name and each of its rounds' reports.
        seed_offset: Added to every walker's seed and to the committee's (another draw of the
            same protocol; :func:`run_otf_seeds` runs several).

    Returns:
        ``variants`` (one object per variant with ``oracle_calls``, ``oracle_step_fraction``,
        ``force_rmse_ev_per_a``, ``energy_mae_ev_per_atom``, ``miss_rate``, ``rdf_difference``,
        ``wall_s``, ``md_steps``, ``threshold``, ``stopped_calling_at_step``...), ``rdf_noise_floor``,
        ``acceptance``, ``protocol``, ``machine``, ``versions``, ``date``.

    Raises:
        ConfigError: the config is invalid, a variant is unknown, ``every_kth`` lacks its k, or a
            variant's folder exists.
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if "every_kth" in variants and label_every is None and "calibrated" not in variants:
        raise ConfigError("every_kth needs the calibrated variant's oracle calls, or label_every")
    config = load_otf_config(config_path)
    config = dataclasses.replace(
        config,
        walkers=tuple(
            dataclasses.replace(w, steps=steps or w.steps, seed=w.seed + seed_offset) for w in config.walkers
        ),
        committee=dataclasses.replace(config.committee, seed=config.committee.seed + seed_offset),
    )
    with tempfile.TemporaryDirectory(prefix="alloop-bench-otf-") as scratch:
        root = Path(workdir) if workdir is not None else Path(scratch)
        for name in variants:
            if (root / name).exists():
                raise ConfigError(f"{root / name} exists; choose another workdir")
        (root / "ground_truth").mkdir(parents=True)
        truth = run_ground_truth(config, root / "ground_truth")
        replica = run_ground_truth(config, root / "ground_truth" / "replica", seed_offset=1)
        results: dict[str, dict[str, Any]] = {
            "ground_truth": {
                "oracle_calls": truth.md_steps,
                "oracle_step_fraction": 1.0,
                "force_rmse_ev_per_a": 0.0,
                "energy_mae_ev_per_atom": 0.0,
                "in_run_force_rmse_ev_per_a": 0.0,
                "in_run_energy_mae_ev_per_atom": 0.0,
                "miss_rate": 0.0,
                "rdf_difference": 0.0,
                "wall_s": truth.wall_s,
                "md_steps": truth.md_steps,
                "threshold": None,
                "stopped_calling_at_step": None,
                "held_out_frames": len(truth.held_out),
            }
        }
        if on_variant is not None:
            on_variant("ground_truth", results["ground_truth"])
        base = config.otf
        settings = {
            "calibrated": base,
            "fixed_threshold": dataclasses.replace(base, calibrate=False, label_every=None),
        }
        (root / "ground_truth" / "result.json").write_text(json.dumps(results["ground_truth"], indent=1))
        for name in ("calibrated", "every_kth", "fixed_threshold"):  # (d) needs (b); (c) may call most
            if name not in variants:
                continue
            if name == "every_kth":
                k = label_every
                if k is None:
                    k = every_kth_interval(
                        config.walkers, results["calibrated"]["oracle_calls"] - base.initial_frames
                    )
                settings[name] = dataclasses.replace(base, label_every=k)
            if name == "fixed_threshold" and "calibrated" in results:
                # The same oracle budget as (b): which committee spends it better?
                budget = results["calibrated"]["oracle_calls"]
                settings[name] = dataclasses.replace(settings[name], max_oracle_calls=budget)

            def rounds(report: RoundReport, name: str = name) -> None:
                if on_round is not None:
                    on_round(name, report)

            variant = dataclasses.replace(config, otf=settings[name])
            results[name] = run_committee_variant(variant, root / name, truth, rounds)
            (root / name / "result.json").write_text(json.dumps(results[name], indent=1))
            if on_variant is not None:
                on_variant(name, results[name])
    return {
        "variants": {name: results[name] for name in VARIANTS if name in results},
        "rdf_noise_floor": rdf_difference(replica.rdf, truth.rdf),
        "acceptance": acceptance(results),
        "protocol": {
            "config": str(config_path),
            "seed_offset": seed_offset,
            "walkers": [dataclasses.asdict(w) for w in config.walkers],
            "atoms": len(config.start()),
            "tolerance_ev_per_a": base.tolerance_ev_per_a,
            "target_miss_rate": base.target_miss_rate,
            "initial_threshold_ev_per_a": base.initial_threshold_ev_per_a,
            "initial_frames": base.initial_frames,
            "check_every": CHECK_EVERY,
            "held_out_every": HELD_OUT_EVERY,
            "rdf": {"r_max_a": RDF_MAX_A, "bin_a": RDF_BIN_A, "frames": "second half of every walker"},
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}",
        "versions": _versions(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_otf_seeds(
    config_path: str | Path,
    seed_offsets: Sequence[int],
    workdir: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The benchmark once per seed offset (walker and committee seeds), and what the runs say together.

    One run ranks the variants by chance as much as by merit: the committee's training and the
    walkers' noise move a force RMSE by as much as the variants differ. See :func:`summarize_seeds`.

    Args:
        config_path: An on-the-fly TOML file.
        seed_offsets: One run per offset (``0`` is the config as it is).
        workdir: Each run goes to ``<workdir>/seed-<offset>`` (default: temporary folders).
        **options: Passed to :func:`run_otf_benchmark`.

    Returns:
        ``runs`` (each :func:`run_otf_benchmark`'s result) and ``summary``.

    Raises:
        ConfigError: no offsets or a repeated one, or what :func:`run_otf_benchmark` raises.
    """
    if not seed_offsets or len(set(seed_offsets)) != len(seed_offsets):
        raise ConfigError(f"seed offsets must be distinct and at least one, got {list(seed_offsets)}")
    runs = [
        run_otf_benchmark(
            config_path,
            None if workdir is None else Path(workdir) / f"seed-{offset}",
            seed_offset=offset,
            **options,
        )
        for offset in seed_offsets
    ]
    return {"runs": runs, "summary": summarize_seeds(runs)}


def summarize_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, the mean and spread of each figure over runs of :func:`run_otf_benchmark`;
    and for the calibrated loop against each baseline, in how many runs it had the lower force
    RMSE at no more oracle calls, and the mean of the per-run RMSE differences.

    ``acceptance`` holds the issue's criteria on the means (calls, RMSE, miss rate) and, for
    ``beats_*``, on the runs: lower mean RMSE, at no more calls in every run.
    """
    if not runs:
        raise ValueError("no runs to summarize")
    keys: tuple[str, ...] = (
        "oracle_calls",
        "oracle_step_fraction",
        "force_rmse_ev_per_a",
        "energy_mae_ev_per_atom",
    )
    keys += ("in_run_force_rmse_ev_per_a", "miss_rate", "rdf_difference", "wall_s")
    variants: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        present = [r["variants"][name] for r in runs if name in r["variants"]]
        if not present:
            continue
        variants[name] = {
            key: {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": values,
            }
            for key in keys
            if (values := [float(v[key]) for v in present if v.get(key) is not None])
        }
        ratios = [v["force_ratios"] for v in present if "force_ratios" in v]
        if ratios:  # each run's calls are a stream of their own: recalibrated within the run, then pooled
            min_count = int(present[0]["force_coverage"]["min_count"])
            force_z = [v.get("force_z", []) for v in present if "force_ratios" in v]
            variants[name]["force_coverage"] = pooled_force_coverage(ratios, min_count, force_z)
    comparisons: dict[str, dict[str, Any]] = {}
    for baseline in ("fixed_threshold", "every_kth"):
        pairs = [
            (r["variants"]["calibrated"], r["variants"][baseline])
            for r in runs
            if "calibrated" in r["variants"] and baseline in r["variants"]
        ]
        if not pairs:
            continue
        comparisons[baseline] = {
            "runs": len(pairs),
            "never_more_calls": all(b["oracle_calls"] <= o["oracle_calls"] for b, o in pairs),
        }
        for prefix, key in (("", "force_rmse_ev_per_a"), ("in_run_", "in_run_force_rmse_ev_per_a")):
            differences = [b[key] - o[key] for b, o in pairs if key in b and key in o]
            mean_difference = float(np.mean(differences)) if differences else None
            comparisons[baseline] |= {
                f"{prefix}wins": sum(d < 0 for d in differences),
                f"{prefix}mean_rmse_difference_ev_per_a": mean_difference,
                f"{prefix}rmse_differences_ev_per_a": differences,
            }
    b = variants.get("calibrated", {})

    def mean(key: str) -> float | None:
        return b[key]["mean"] if key in b else None

    def beats(name: str, in_run: bool) -> bool | None:
        c = comparisons.get(name)
        if c is None:
            return None
        difference = c[f"{'in_run_' if in_run else ''}mean_rmse_difference_ev_per_a"]
        return None if difference is None else bool(difference < 0 and c["never_more_calls"])

    return {
        "runs": len(runs),
        "seed_offsets": [r.get("protocol", {}).get("seed_offset") for r in runs],
        "variants": variants,
        "calibrated_against": comparisons,
        "acceptance": _criteria(
            mean("oracle_step_fraction"), mean("force_rmse_ev_per_a"), mean("miss_rate"), beats
        ),
    }


def _versions() -> dict[str, str]:
    import ase
    import e3nn
    import mace
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "mace-torch": getattr(mace, "__version__", "unknown"),
        "e3nn": e3nn.__version__,
        "ase": ase.__version__,
    }
