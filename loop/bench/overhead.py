"""Decision overhead: time and peak memory of one pool decision, ours against naive BoTorch.

A *decision* is: fit a GP to ``n`` observations, score a pool of ``N`` candidates (posterior mean and
standard deviation, ``d = 6``) and pick a batch of ``q = 4``. The GP is fitted once per ``n`` (the same
``SingleTaskGP`` for every method, so the fit is reported once); scoring and picking are timed per method:

* ``naive``: ``model.posterior(pool.unsqueeze(-2))`` (t-batch mode, whole pool at once) for mean/std, then
  ``optimize_acqf_discrete(qUpperConfidenceBound, q=4)`` over the pool.
* ``exact``: :func:`surrogates.predict.exact_predict` (Cholesky once, one product by ``L^-1`` per chunk),
  then the ``q`` best UCB scores.
* ``mixed``: :func:`surrogates.predict.mixed_precision_predict` (the exact computation in float32, redone in
  float64 where the float32 variance is too small to trust), then the ``q`` best UCB scores.
* ``love``: :func:`surrogates.predict.love_predict` (gpytorch LOVE, rank 256), then the ``q`` best UCB
  scores; kept for comparison (its std error is large where the posterior variance is small).

Each (n, N, method) cell runs in its own subprocess, so its peak resident memory (``ru_maxrss``) minus its
resident memory before scoring is the decision's peak memory. A cell whose time, extrapolated from a
small probe (the time of one candidate, the one-off cache, plus the probe's time per candidate beyond it),
exceeds ``max_seconds`` is not run; it is reported with ``"status": "extrapolated"``.
The matrix-product bound of a cell is ``2 n^2 N`` flops at the float64 GEMM rate measured in the same process.

Errors: ``exact`` against the naive (t-batch) posterior on the first :data:`PROBE` candidates; the
approximate modes (``mixed``, ``love``) against ``exact`` on the whole pool, after timing. The mean error is
relative to the largest absolute mean (means cross zero); the std errors are relative per candidate
(``max_rel_std_error``, ``mean_rel_std_error``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DIM = 6
BATCH = 4
BETA = 1.0
PROBE = 2048
"""Candidates scored to extrapolate a cell's time before running it."""

FULL_NS: tuple[int, ...] = (100, 1000, 2000)
FULL_POOLS: tuple[int, ...] = (10_000, 100_000, 1_000_000)
QUICK_NS: tuple[int, ...] = (50,)
QUICK_POOLS: tuple[int, ...] = (2_000,)
METHODS: tuple[str, ...] = ("naive", "exact", "mixed", "love")
APPROXIMATE: tuple[str, ...] = ("mixed", "love")
"""Methods whose errors are measured against ``exact`` on the whole pool."""


def training_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n x 6`` uniform inputs and ``n x 1`` noisy negative Hartmann-6 values."""
    from botorch.test_functions import Hartmann

    generator = torch.Generator().manual_seed(seed)
    X = torch.rand(n, DIM, generator=generator, dtype=torch.double)
    Y = -Hartmann(dim=DIM)(X).unsqueeze(-1) + 0.01 * torch.randn(
        n, 1, generator=generator, dtype=torch.double
    )
    return X, Y


def pool(size: int, seed: int = 1) -> torch.Tensor:
    """``size x 6`` uniform candidates."""
    return torch.rand(size, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.double)


def build_model(X: torch.Tensor, Y: torch.Tensor, state: dict[str, Any] | None = None) -> Any:
    """A ``SingleTaskGP`` (Normalize, Standardize, BoTorch defaults); fitted unless ``state`` is given."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.input import Normalize
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model = SingleTaskGP(
        X,
        Y,
        input_transform=Normalize(DIM, bounds=torch.stack([torch.zeros(DIM), torch.ones(DIM)]).double()),
        outcome_transform=Standardize(1),
    )
    if state is None:
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    else:
        model.load_state_dict(state)
    return model.eval()


def gemm_gflops(n: int, columns: int = 4096, repeats: int = 3) -> float:
    """Measured float64 GEMM rate (GFLOP/s) of an ``n x n`` by ``n x columns`` product."""
    a = torch.randn(n, n, dtype=torch.double)
    b = torch.randn(n, columns, dtype=torch.double)
    a @ b  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2.0 * n * n * columns / (time.perf_counter() - started) / 1e9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _score(method: str, model: Any, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``N`` posterior means and standard deviations of one method."""
    from surrogates.predict import exact_predict, love_predict, mixed_precision_predict

    with torch.no_grad():
        if method == "naive":
            posterior = model.posterior(candidates.unsqueeze(-2))
            return posterior.mean.reshape(-1), posterior.variance.clamp_min(0).sqrt().reshape(-1)
        predict = {"exact": exact_predict, "mixed": mixed_precision_predict, "love": love_predict}[method]
        mean, variance = predict(model, candidates)
        return mean.reshape(-1), variance.sqrt().reshape(-1)


def _errors(
    mean: torch.Tensor, std: torch.Tensor, ref_mean: torch.Tensor, ref_std: torch.Tensor
) -> dict[str, float]:
    """Largest relative mean error (to the means' scale) and largest and mean relative std errors."""
    scale = ref_mean.abs().max().clamp_min(1e-12)  # relative to the mean's scale: means cross zero
    std_error = (std - ref_std).abs() / ref_std.clamp_min(1e-12)
    return {
        "max_rel_mean_error": float(((mean - ref_mean).abs() / scale).max()),
        "max_rel_std_error": float(std_error.max()),
        "mean_rel_std_error": float(std_error.mean()),
    }


def _pick(method: str, model: Any, candidates: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Choose a batch of ``BATCH``: qUCB + ``optimize_acqf_discrete`` (naive), else the best UCB scores."""
    if method == "naive":
        from botorch.acquisition import qUpperConfidenceBound
        from botorch.optim import optimize_acqf_discrete

        with torch.no_grad():
            optimize_acqf_discrete(qUpperConfidenceBound(model, beta=BETA), q=BATCH, choices=candidates)
        return
    torch.topk(mean + math.sqrt(BETA) * std, BATCH)


def run_cell(n: int, size: int, method: str, model_file: str, max_seconds: float) -> dict[str, Any]:
    """One (n, N, method) cell, in this process; see the module docstring."""
    blob = torch.load(model_file, weights_only=False)
    model = build_model(blob["X"], blob["Y"], blob["state"])
    candidates = pool(size)
    cell: dict[str, Any] = {"n": n, "pool": size, "method": method}
    gflops = gemm_gflops(n)
    cell["gemm_gflops"] = gflops
    cell["bound_seconds"] = 2.0 * n * n * size / (gflops * 1e9)
    probe = candidates[: min(PROBE, size)]
    started = time.perf_counter()
    _score(method, model, candidates[:1])
    fixed_seconds = time.perf_counter() - started  # the one-off training cache (and warm-up)
    started = time.perf_counter()
    _score(method, model, probe)
    probe_seconds = time.perf_counter() - started
    per_candidate = max(0.0, probe_seconds - fixed_seconds) / probe.shape[0]
    extrapolated = fixed_seconds + per_candidate * size
    estimate = extrapolated * (1 + BATCH) if method == "naive" else extrapolated  # qUCB rescores per pick
    if estimate > max_seconds:
        cell.update(status="extrapolated", score_seconds=extrapolated, estimate=estimate)
        return cell
    if method not in APPROXIMATE:  # exactness against the naive posterior on the probe
        cell.update(_errors(*_score(method, model, probe), *_score("naive", model, probe)))
        cell["error_reference"] = f"naive, first {probe.shape[0]} candidates"
    baseline = _rss_bytes()
    started = time.perf_counter()
    mean, std = _score(method, model, candidates)
    cell["score_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    _pick(method, model, candidates, mean, std)
    cell["pick_seconds"] = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cell["peak_memory_bytes"] = max(0, peak - baseline)
    if method in APPROXIMATE:  # after the timing and the memory peak: the whole pool against exact
        cell.update(_errors(mean, std, *_score("exact", model, candidates)))
        cell["error_reference"] = "exact, whole pool"
    cell["status"] = "measured"
    return cell


def run_overhead(
    ns: Sequence[int] = FULL_NS,
    pools: Sequence[int] = FULL_POOLS,
    methods: Sequence[str] = METHODS,
    max_seconds: float = 120.0,
    threads: int = 2,
) -> dict[str, Any]:
    """Every (n, N, method) cell, each in a subprocess, with ratios to naive and to the GEMM bound.

    Args:
        ns: Numbers of observations.
        pools: Pool sizes.
        methods: Methods among :data:`METHODS`.
        max_seconds: Cells estimated to take longer are extrapolated, not run.
        threads: ``torch.set_num_threads`` of every cell.

    Raises:
        ValueError: On an unknown method or a non-positive size.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if any(v < 1 for v in (*ns, *pools)):
        raise ValueError("sizes must be positive")
    torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "threads": threads,
        "cores": os.cpu_count(),
        "dim": DIM,
        "batch": BATCH,
        "max_seconds": max_seconds,
        "versions": _versions(),
        "fits": [],
        "cells": [],
    }
    with tempfile.TemporaryDirectory(prefix="alloop-overhead-") as folder:
        for n in ns:
            X, Y = training_data(n)
            started = time.perf_counter()
            model = build_model(X, Y)
            out["fits"].append({"n": n, "fit_seconds": time.perf_counter() - started})
            model_file = str(Path(folder) / f"model-{n}.pt")
            torch.save({"X": X, "Y": Y, "state": model.state_dict()}, model_file)
            for size in pools:
                row = [_subprocess_cell(n, size, m, model_file, max_seconds, threads) for m in methods]
                naive = next((c for c in row if c["method"] == "naive"), None)
                for cell in row:
                    if cell.get("score_seconds") and naive and naive.get("score_seconds"):
                        cell["speedup_vs_naive"] = naive["score_seconds"] / cell["score_seconds"]
                    if cell.get("score_seconds"):
                        cell["ratio_to_bound"] = cell["score_seconds"] / cell["bound_seconds"]
                out["cells"].extend(row)
    return out


def _subprocess_cell(
    n: int, size: int, method: str, model_file: str, max_seconds: float, threads: int
) -> dict:
    args = [sys.executable, "-m", "loop.bench.overhead", str(n), str(size), method, model_file]
    args += [str(max_seconds), str(threads)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        if done.returncode < 0:  # killed by a signal; the kernel's out-of-memory killer sends SIGKILL (9)
            hint = " (SIGKILL: out of memory?)" if done.returncode == -9 else ""
            tail = [f"killed by signal {-done.returncode}{hint}"]
        return {"n": n, "pool": size, "method": method, "status": "failed", "error": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _versions() -> dict[str, str]:
    import botorch
    import gpytorch
    import linear_operator

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "botorch": botorch.__version__,
        "gpytorch": gpytorch.__version__,
        "linear_operator": linear_operator.__version__,
    }


def _main(argv: Sequence[str]) -> None:
    n, size, method, model_file, max_seconds, threads = argv
    torch.set_num_threads(int(threads))
    print(json.dumps(run_cell(int(n), int(size), method, model_file, float(max_seconds))))


if __name__ == "__main__":
    _main(sys.argv[1:])
