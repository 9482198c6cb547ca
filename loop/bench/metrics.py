"""Benchmark metrics for pool-based active-learning campaigns (Liang et al. 2021).

The protocol is the one of Liang et al., "Benchmarking the performance of Bayesian optimization across
multiple experimental materials science domains", npj Comput. Mater. 7, 188 (2021):

- A campaign is summarised by its *top-count* row: entry ``i`` is the number of good designs (the
  ``ceil(0.05 N)`` best of a pool of ``N``) found after ``i + 1`` experiments.
- ``Top%(i) = top_count(i) / good_count``; the random baseline is ``i / N``.
- Campaigns are aggregated into fold-averaged curves (Python ``random`` seeded by each aggregation seed,
  5 folds of 10 campaigns out of 50), from which the median and the 5th/95th percentiles are taken per
  experiment.
- The enhancement factor EF and acceleration factor AF compare the median curve with the random baseline on a
  0.005 grid.

All functions are pure numpy; arrays of experiments are 0-based (column ``i`` = after ``i + 1`` experiments)
while every *number of experiments* returned to the caller is 1-based.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

GRID_STEP: float = 0.005
"""Resolution of the grid that the median and random curves are rounded to for EF and AF."""

N_FOLDS: int = 5
"""Number of folds drawn per aggregation seed."""

QUANTILES: tuple[float, float] = (0.05, 0.95)
"""Lower and upper quantiles of the reported band."""

SUMMARY_LEVELS: tuple[float, ...] = (0.5, 0.8, 1.0)
"""Top% levels for which the summary reports the number of experiments needed."""


def default_good_count(pool_size: int) -> int:
    """Number of good designs in a pool: ``ceil(0.05 N)``.

    Args:
        pool_size: Number of designs ``N`` in the pool.

    Returns:
        ``ceil(0.05 * pool_size)``.

    Raises:
        ValueError: If ``pool_size <= 0``.
    """
    _check_positive(pool_size, "pool_size")
    return math.ceil(0.05 * pool_size)


def topcount_from_choices(chosen: ArrayLike, good_mask: ArrayLike) -> NDArray[np.int64]:
    """Top-count row of one campaign from the designs it chose, in order.

    Args:
        chosen: ``n_experiments``-dim sequence of distinct pool indices, in the order they were measured
            (initial designs included).
        good_mask: ``N``-dim boolean array, ``True`` for the good designs of the pool.

    Returns:
        ``n_experiments``-dim int array; entry ``i`` = good designs among the first ``i + 1`` choices.

    Raises:
        ValueError: If an index is out of range or repeated, or if the inputs are not 1-dimensional.
    """
    idx = np.asarray(chosen)
    mask = np.asarray(good_mask)
    if idx.ndim != 1 or mask.ndim != 1:
        raise ValueError(
            f"chosen and good_mask must be 1-dimensional, got shapes {idx.shape} and {mask.shape}"
        )
    if mask.dtype != np.bool_:
        raise ValueError(f"good_mask must be boolean, got dtype {mask.dtype}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"chosen must hold integer pool indices, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= mask.size):
        raise ValueError(f"chosen holds indices outside the pool [0, {mask.size})")
    if np.unique(idx).size != idx.size:
        raise ValueError("chosen holds a design more than once")
    return np.cumsum(mask[idx.astype(np.int64)], dtype=np.int64)


def pad_topcounts(
    rows: Sequence[ArrayLike], good_count: int, n_experiments: int | None = None
) -> NDArray[np.int64]:
    """Stack top-count rows of possibly different lengths into one matrix.

    A campaign that stopped early after finding every good design is padded with ``good_count`` (Top% = 1),
    as in the reference implementation.

    Args:
        rows: ``n_campaigns`` rows, each a 1-dim sequence of cumulative good-design counts.
        good_count: Number of good designs in the pool.
        n_experiments: Width of the result; defaults to the longest row.

    Returns:
        ``n_campaigns x n_experiments`` int matrix.

    Raises:
        ValueError: If there are no rows, a row is not 1-dim or longer than ``n_experiments``, or a short row
            stopped before finding all ``good_count`` good designs.
    """
    _check_positive(good_count, "good_count")
    arrays = [np.asarray(r) for r in rows]
    if not arrays:
        raise ValueError("no campaigns given")
    for k, arr in enumerate(arrays):
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"campaign {k}: a top-count row must be a non-empty 1-dim sequence, got {arr.shape}"
            )
    width = max(a.size for a in arrays) if n_experiments is None else n_experiments
    _check_positive(width, "n_experiments")
    out = np.full((len(arrays), width), good_count, dtype=np.int64)
    for k, arr in enumerate(arrays):
        if arr.size > width:
            raise ValueError(f"campaign {k} has {arr.size} experiments, more than n_experiments={width}")
        if arr.size < width and arr[-1] != good_count:
            raise ValueError(
                f"campaign {k} stopped after {arr.size} experiments with {arr[-1]} of {good_count} "
                "good designs; only campaigns that found every good design can be padded"
            )
        out[k, : arr.size] = arr
    return out


def top_percent(topcount: ArrayLike, good_count: int) -> NDArray[np.float64]:
    """Top% curves from a top-count matrix.

    Args:
        topcount: ``n_campaigns x n_experiments`` matrix of cumulative good-design counts.
        good_count: Number of good designs in the pool.

    Returns:
        ``n_campaigns x n_experiments`` float matrix ``topcount / good_count``.

    Raises:
        ValueError: If the matrix is not 2-dim, holds negative or non-integer counts, counts above
            ``good_count``, or if ``good_count <= 0``. Rows are not required to be non-decreasing: the
            reference random-forest file has campaigns whose count drops after the initial designs.
    """
    _check_positive(good_count, "good_count")
    counts = np.asarray(topcount, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] == 0:
        raise ValueError(
            f"topcount must be a non-empty n_campaigns x n_experiments matrix, got shape {counts.shape}"
        )
    if np.any(counts != np.round(counts)) or np.any(counts < 0):
        raise ValueError("topcount must hold non-negative integer counts")
    if np.any(counts > good_count):
        raise ValueError(f"topcount holds counts up to {int(counts.max())}, above good_count={good_count}")
    return counts / good_count


def random_baseline(pool_size: int, n_experiments: int | None = None) -> NDArray[np.float64]:
    """Expected Top% of random sampling without replacement: ``i / N``.

    Args:
        pool_size: Number of designs ``N`` in the pool.
        n_experiments: Length of the curve; defaults to ``pool_size``.

    Returns:
        ``n_experiments``-dim array; entry ``i`` = ``(i + 1) / N``.

    Raises:
        ValueError: If ``pool_size <= 0`` or ``n_experiments <= 0``.
    """
    _check_positive(pool_size, "pool_size")
    length = pool_size if n_experiments is None else n_experiments
    _check_positive(length, "n_experiments")
    return np.arange(1, length + 1, dtype=np.float64) / pool_size


def fold_plan(n_campaigns: int) -> tuple[int, int]:
    """Fold size and number of folds per aggregation seed.

    With the reference 50 campaigns this is 5 folds of 10. In general folds hold ``max(1, K // 5)``
    campaigns and there are ``min(5, K // fold_size)`` of them, so every fold of one seed is disjoint; with
    fewer than 5 campaigns each fold is a single campaign.

    Args:
        n_campaigns: Number of campaigns ``K``.

    Returns:
        ``(fold_size, n_folds)``.

    Raises:
        ValueError: If ``n_campaigns <= 0``.
    """
    _check_positive(n_campaigns, "n_campaigns")
    fold_size = max(1, n_campaigns // N_FOLDS)
    return fold_size, min(N_FOLDS, n_campaigns // fold_size)


def fold_indices(seeds: Sequence[int], n_campaigns: int) -> list[list[int]]:
    """Campaign indices of every fold, drawn exactly as the reference aggregation does.

    For each seed ``s``: ``random.seed(s)``; ``idx = list(range(K))``; ``n_folds`` times
    ``pick = random.sample(idx, fold_size)`` and remove the picked campaigns from ``idx``.

    Args:
        seeds: Aggregation seeds (the reference uses 100).
        n_campaigns: Number of campaigns ``K``; see `fold_plan` for the fold sizes.

    Returns:
        ``len(seeds) * n_folds`` lists of ``fold_size`` campaign indices.

    Raises:
        ValueError: If ``seeds`` is empty or ``n_campaigns <= 0``.
    """
    if len(seeds) == 0:
        raise ValueError("at least one aggregation seed is needed")
    fold_size, n_folds = fold_plan(n_campaigns)
    rng = random.Random()
    folds: list[list[int]] = []
    for seed in seeds:
        rng.seed(seed)
        idx = list(range(n_campaigns))
        for _ in range(n_folds):
            pick = rng.sample(idx, fold_size)
            for j in pick:
                idx.remove(j)
            folds.append(pick)
    return folds


def fold_averaged_curves(top_pct: ArrayLike, seeds: Sequence[int]) -> NDArray[np.float64]:
    """Fold-averaged Top% curves (500 of them for 50 campaigns and the 100 reference seeds).

    Args:
        top_pct: ``n_campaigns x n_experiments`` Top% matrix.
        seeds: Aggregation seeds.

    Returns:
        ``(len(seeds) * n_folds) x n_experiments`` matrix; each row is the mean of one fold's campaigns.

    Raises:
        ValueError: If ``top_pct`` is not a non-empty 2-dim matrix or ``seeds`` is empty.
    """
    curves = _as_matrix(top_pct, "top_pct")
    folds = np.asarray(fold_indices(seeds, curves.shape[0]), dtype=np.int64)
    averaged: NDArray[np.float64] = curves[folds].mean(axis=1)
    return averaged


def median_band(
    curves: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per-experiment median and 5th/95th percentiles (``numpy.quantile``, linear).

    Args:
        curves: ``n_curves x n_experiments`` matrix.

    Returns:
        ``(median, low, high)``, each ``n_experiments``-dim.

    Raises:
        ValueError: If ``curves`` is not a non-empty 2-dim matrix.
    """
    mat = _as_matrix(curves, "curves")
    low, high = np.quantile(mat, QUANTILES, axis=0, method="linear")
    return np.median(mat, axis=0), low, high


def grid_levels(curve: ArrayLike) -> NDArray[np.int64]:
    """Curve rounded to the 0.005 grid, as integer grid indices (``round(x / 0.005)``, half to even).

    Args:
        curve: ``n_experiments``-dim Top% curve.

    Returns:
        ``n_experiments``-dim int array; multiply by `GRID_STEP` for the rounded value.
    """
    return np.rint(np.asarray(curve, dtype=np.float64) / GRID_STEP).astype(np.int64)


def round_to_grid(curve: ArrayLike) -> NDArray[np.float64]:
    """Curve rounded to the 0.005 grid: ``round(x / 0.005) * 0.005``.

    Args:
        curve: ``n_experiments``-dim Top% curve.

    Returns:
        ``n_experiments``-dim rounded curve.
    """
    return grid_levels(curve).astype(np.float64) * GRID_STEP


def enhancement_factor(median: ArrayLike, pool_size: int) -> NDArray[np.float64]:
    """EF(i) = rounded median Top%(i) / (i / N), the random curve not rounded.

    Args:
        median: ``n_experiments``-dim median Top% curve.
        pool_size: Number of designs ``N`` in the pool.

    Returns:
        ``n_experiments``-dim array; entry ``i`` is EF after ``i + 1`` experiments.

    Raises:
        ValueError: If ``median`` is not a non-empty 1-dim array or ``pool_size <= 0``.
    """
    curve = _as_curve(median, "median")
    return round_to_grid(curve) / random_baseline(pool_size, curve.size)


def acceleration_factor(median: ArrayLike, pool_size: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """AF(t) = n_random(t) / n_BO(t) at every grid level ``t`` reached by both rounded curves.

    Both the median curve and the random curve ``i / N`` are rounded to the 0.005 grid. For each level
    ``t = 0, 0.005, ..., 1`` present in both, in increasing order, a forward-only pointer on each curve
    advances to the first experiment (1-based, searching from where that pointer stopped for the previous
    level) whose rounded value equals ``t``. Levels that the BO curve jumps over are skipped.

    Args:
        median: ``n_experiments``-dim median Top% curve.
        pool_size: Number of designs ``N`` in the pool.

    Returns:
        ``(levels, af)``: the levels ``t`` (``m``-dim) and AF at each (``m``-dim).

    Raises:
        ValueError: If ``median`` is not a non-empty 1-dim array or ``pool_size <= 0``.
    """
    bo = grid_levels(_as_curve(median, "median"))
    rnd = grid_levels(random_baseline(pool_size))
    last_level = round(1.0 / GRID_STEP)
    common = sorted(set(bo.tolist()) & set(rnd.tolist()) & set(range(last_level + 1)))
    levels: list[float] = []
    factors: list[float] = []
    p_bo = p_rnd = 0
    for level in common:
        n_bo = _first_from(bo, level, p_bo)
        n_rnd = _first_from(rnd, level, p_rnd)
        if n_bo is None or n_rnd is None:
            continue
        p_bo, p_rnd = n_bo, n_rnd
        levels.append(level * GRID_STEP)
        factors.append((n_rnd + 1) / (n_bo + 1))
    return np.asarray(levels, dtype=np.float64), np.asarray(factors, dtype=np.float64)


def experiments_to_reach(curve: ArrayLike, level: float) -> int | None:
    """Number of experiments after which a curve, rounded to the 0.005 grid, first reaches a level.

    Rounding matches EF and AF; it is why random sampling reaches Top% 0.8 of 600 designs after 479
    experiments (479 / 600 = 0.7983 rounds to 0.8).

    Args:
        curve: ``n_experiments``-dim Top% curve.
        level: Top% level, e.g. 0.8.

    Returns:
        1-based number of experiments, or ``None`` if the rounded curve never reaches ``level``.
    """
    hits = np.flatnonzero(grid_levels(_as_curve(curve, "curve")) >= grid_levels(np.asarray([level]))[0])
    return int(hits[0]) + 1 if hits.size else None


def summarize(
    topcount: NDArray[Any] | Sequence[ArrayLike],
    pool_size: int,
    seeds: Sequence[int],
    good_count: int | None = None,
) -> dict[str, Any]:
    """Headline numbers of a set of campaigns, per the Liang et al. protocol.

    Args:
        topcount: ``n_campaigns x n_experiments`` top-count matrix, or ragged rows of campaigns that stopped
            early after finding every good design (padded with Top% = 1).
        pool_size: Number of designs ``N`` in the pool.
        seeds: Aggregation seeds.
        good_count: Number of good designs; defaults to ``ceil(0.05 N)``.

    Returns:
        A JSON-serialisable dict: for each level ``x`` in (50, 80, 100), ``cycles_to_top{x}`` (experiments at
        which the median curve first reaches it, ``None`` if never), ``cycles_to_top{x}_low`` /
        ``cycles_to_top{x}_high`` (the same for the 95th / 5th percentile curves, i.e. the optimistic and
        pessimistic ends of the band), ``top{x}_band`` (5% and 95% Top% values at ``cycles_to_top{x}``) and
        ``random_cycles_to_top{x}``; plus ``ef_peak``, ``ef_peak_cycle``, ``af_max``, ``af_max_level``, and
        the run sizes ``n_campaigns``, ``n_experiments``, ``pool_size``, ``good_count``.

    Raises:
        ValueError: On inconsistent inputs (see `pad_topcounts` and `top_percent`).
    """
    _check_positive(pool_size, "pool_size")
    good = default_good_count(pool_size) if good_count is None else good_count
    _check_positive(good, "good_count")
    if good > pool_size:
        raise ValueError(f"good_count={good} exceeds pool_size={pool_size}")
    counts = _as_count_matrix(topcount, good, pool_size)
    if counts.shape[1] > pool_size:
        raise ValueError(f"campaigns have {counts.shape[1]} experiments, more than pool_size={pool_size}")
    median, low, high = median_band(fold_averaged_curves(top_percent(counts, good), seeds))
    rnd = random_baseline(pool_size)
    ef = enhancement_factor(median, pool_size)
    af_levels, af = acceleration_factor(median, pool_size)
    out: dict[str, Any] = {
        "pool_size": pool_size,
        "good_count": good,
        "n_campaigns": int(counts.shape[0]),
        "n_experiments": int(counts.shape[1]),
    }
    for level in SUMMARY_LEVELS:
        key = f"top{round(level * 100)}"
        n_med = experiments_to_reach(median, level)
        out[f"cycles_to_{key}"] = n_med
        out[f"cycles_to_{key}_low"] = experiments_to_reach(high, level)
        out[f"cycles_to_{key}_high"] = experiments_to_reach(low, level)
        out[f"{key}_band"] = None if n_med is None else [float(low[n_med - 1]), float(high[n_med - 1])]
        out[f"random_cycles_to_{key}"] = experiments_to_reach(rnd, level)
    peak = int(np.argmax(ef))
    out["ef_peak"] = float(ef[peak])
    out["ef_peak_cycle"] = peak + 1
    if af.size:
        best = int(np.argmax(af))
        out["af_max"], out["af_max_level"] = float(af[best]), float(af_levels[best])
    else:
        out["af_max"], out["af_max_level"] = None, None
    return out


def load_topcount_csv(path: str | Path) -> list[NDArray[np.int64]]:
    """Read a reference top-count file: a ``#`` comment line, then one comma-separated row per campaign.

    Rows may have different lengths (campaigns that stopped early).

    Args:
        path: CSV file.

    Returns:
        One int array per campaign.

    Raises:
        ValueError: If the file holds no rows or a value is not an integer.
    """
    rows: list[NDArray[np.int64]] = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            rows.append(np.asarray([int(v) for v in text.split(",")], dtype=np.int64))
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: not a row of integer counts ({err})") from err
    if not rows:
        raise ValueError(f"{path}: no campaign rows")
    return rows


def load_seeds(path: str | Path) -> list[int]:
    """Read aggregation seeds, one integer per line (blank and ``#`` lines ignored).

    Args:
        path: Text file.

    Returns:
        The seeds in file order.
    """
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return [int(line) for line in lines if line and not line.startswith("#")]


def _first_from(levels: NDArray[np.int64], level: int, start: int) -> int | None:
    """0-based index of the first entry ``== level`` at or after ``start``, or ``None``."""
    hits = np.flatnonzero(levels[start:] == level)
    return start + int(hits[0]) if hits.size else None


def _as_count_matrix(
    topcount: NDArray[Any] | Sequence[ArrayLike], good_count: int, pool_size: int
) -> NDArray[np.int64]:
    """Top-count input as an ``n_campaigns x n_experiments`` matrix.

    Rows of different lengths are padded (`pad_topcounts`): to the pool size when every row shorter than the
    pool found all good designs (the reference protocol runs until the pool is exhausted), else to the longest
    row, which fails for an unfinished short row.
    """
    rows = [np.asarray(r) for r in topcount]
    if isinstance(topcount, np.ndarray) and topcount.ndim != 2:
        raise ValueError(
            f"topcount must be an n_campaigns x n_experiments matrix, got shape {topcount.shape}"
        )
    lengths = {r.size for r in rows}
    if len(lengths) <= 1:
        return pad_topcounts(rows, good_count)
    finished = all(r.size >= pool_size or (r.size > 0 and r[-1] == good_count) for r in rows if r.ndim == 1)
    return pad_topcounts(rows, good_count, pool_size if finished else None)


def _as_matrix(values: ArrayLike, name: str) -> NDArray[np.float64]:
    """Values as a non-empty 2-dim float matrix."""
    mat = np.asarray(values, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] == 0 or mat.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-dim matrix, got shape {mat.shape}")
    return mat


def _as_curve(values: ArrayLike, name: str) -> NDArray[np.float64]:
    """Values as a non-empty 1-dim float array."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-dim curve, got shape {arr.shape}")
    return arr


def _check_positive(value: int, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
