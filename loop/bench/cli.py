"""``alloop bench``: benchmark commands (metrics of pool-based campaigns, Liang et al. 2021 protocol)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loop.bench import metrics
from loop.bench.display import fmt, summary_table
from loop.bench.lab_commands import (
    calibration_command,
    feasibility_command,
    moo_command,
    transfer_command,
    transfer_hartmann_command,
)
from loop.bench.otf_command import otf_command
from loop.bench.scaleout import scaleout
from loop.bench.structure_commands import discovery_command, multifidelity_command, prerelax_command

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

app = typer.Typer(
    help="Benchmark active-learning campaigns on pooled data sets.",
    no_args_is_help=True,
)


@app.callback()
def _bench() -> None:
    """Benchmark active-learning campaigns on pooled data sets."""


# Commands defined beside their benchmarks.
app.command("scaleout")(scaleout)
app.command("otf")(otf_command)
app.command("calibration")(calibration_command)
app.command("feasibility")(feasibility_command)
app.command("moo")(moo_command)
app.command("transfer")(transfer_command)
app.command("transfer-hartmann")(transfer_hartmann_command)
app.command("discovery")(discovery_command)
app.command("prerelax")(prerelax_command)
app.command("multifidelity")(multifidelity_command)


@app.command("metrics")
def metrics_command(
    topcount: Annotated[
        Path,
        typer.Option(
            "--topcount",
            exists=True,
            dir_okay=False,
            readable=True,
            help="CSV of top-count trajectories: a '#' comment line, then one row per campaign.",
        ),
    ],
    pool_size: Annotated[int, typer.Option("--pool-size", min=1, help="Number of designs N in the pool.")],
    good_count: Annotated[
        int | None,
        typer.Option(
            "--good-count",
            min=1,
            help="Number of good designs [default: ceil(0.05 N)].",
        ),
    ] = None,
    seeds: Annotated[
        Path | None,
        typer.Option(
            "--seeds",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Aggregation seeds, one per line [default: aggregation_seeds.txt beside --topcount].",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Summarise campaigns: experiments to reach Top% 0.5/0.8/1, peak EF and max AF."""
    seed_path = seeds if seeds is not None else topcount.with_name("aggregation_seeds.txt")
    if not seed_path.is_file():
        raise typer.BadParameter(f"no aggregation seeds at {seed_path}; pass --seeds", param_hint="--seeds")
    try:
        summary = metrics.summarize(
            metrics.load_topcount_csv(topcount),
            pool_size=pool_size,
            seeds=metrics.load_seeds(seed_path),
            good_count=good_count,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--topcount") from err
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        Console().print(summary_table(summary, topcount.name))


@app.command("pool")
def pool_command(
    data: Annotated[
        Path,
        typer.Option("--data", exists=True, dir_okay=False, readable=True, help="CSV table of measurements."),
    ],
    objective: Annotated[str, typer.Option("--objective", help="Objective column.")],
    maximize: Annotated[
        bool, typer.Option("--maximize/--minimize", help="Direction of the objective.")
    ] = True,
    good_fraction: Annotated[
        float, typer.Option("--good-fraction", min=0.0, max=1.0, help="Fraction of designs that are good.")
    ] = 0.05,
    campaigns: Annotated[int, typer.Option("--campaigns", min=1, help="Campaigns of our loop.")] = 10,
    acquisition: Annotated[str, typer.Option("--acquisition", help="Acquisition type of our loop.")] = "ucb",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Designs per cycle.")] = 1,
    inputs: Annotated[
        str | None,
        typer.Option("--inputs", help="Comma-separated input columns [default: all but the objective]."),
    ] = None,
    max_experiments: Annotated[
        int | None,
        typer.Option("--max-experiments", min=3, help="Budget per campaign [default: the whole pool]."),
    ] = None,
    random_campaigns: Annotated[
        int | None,
        typer.Option("--random-campaigns", min=0, help="Measured random campaigns [default: --campaigns]."),
    ] = None,
    beta: Annotated[float | None, typer.Option("--beta", min=0.0, help="UCB beta.")] = None,
    kernel: Annotated[str | None, typer.Option("--kernel", help="GP kernel: matern52 or rbf.")] = None,
    reference: Annotated[
        list[Path] | None,
        typer.Option(
            "--reference", exists=True, dir_okay=False, help="Reference top-count CSV (repeatable)."
        ),
    ] = None,
    seeds: Annotated[
        Path | None,
        typer.Option(
            "--seeds",
            exists=True,
            dir_okay=False,
            help="Aggregation seeds [default: aggregation_seeds.txt beside --data, else 0..99].",
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a Top%-vs-experiments plot here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No per-campaign progress on stderr.")] = False,
) -> None:
    """Run our loop on a measured pool (Liang et al. protocol) against random and references."""
    from loop.bench import pool as bench_pool  # torch/botorch import only when needed

    try:
        problem = bench_pool.PoolProblem.from_csv(
            data, objective, maximize, good_fraction, inputs.split(",") if inputs else None
        )
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--data/--objective") from err
    seed_path = seeds if seeds is not None else data.with_name("aggregation_seeds.txt")
    agg_seeds = metrics.load_seeds(seed_path) if seed_path.is_file() else list(range(100))
    surrogate = {"kernel": kernel} if kernel else None
    options = {"beta": beta} if beta is not None else None

    def progress(label: str) -> Any:
        def report(k: int, trace: Any) -> None:
            if not quiet:
                n80 = metrics.experiments_to_reach(trace.topcount / problem.good_count, 0.8)
                typer.echo(
                    f"[{label}] campaign {k + 1}: {len(trace.chosen)} experiments, "
                    f"{int(trace.topcount[-1])}/{problem.good_count} good, Top% 0.8 at {n80}",
                    err=True,
                )

        return report

    started = time.time()
    ours = bench_pool.run_pool_benchmark(
        problem,
        acquisition,
        campaigns,
        agg_seeds,
        batch_size=batch,
        max_experiments=max_experiments,
        surrogate=surrogate,
        acquisition_options=options,
        on_campaign=progress(acquisition),
    )
    summary = dict(ours.summary)
    curves: list[tuple[str, NDArray[np.float64], NDArray[np.float64] | None, NDArray[np.float64] | None]]
    curves = [(f"ours ({acquisition})", ours.median, ours.low, ours.high)]
    n_random = campaigns if random_campaigns is None else random_campaigns
    if n_random:
        rnd = bench_pool.run_pool_benchmark(
            problem, "random", n_random, agg_seeds, batch_size=batch, on_campaign=progress("random")
        )
        summary["random_measured"] = rnd.summary
        curves.append(("random (measured)", rnd.median, rnd.low, rnd.high))
    references: dict[str, Any] = {}
    for path in reference or []:
        rows = metrics.load_topcount_csv(path)
        references[path.stem] = metrics.summarize(rows, problem.pool_size, agg_seeds, problem.good_count)
        median, _, _ = bench_pool.median_curves(rows, problem.good_count, agg_seeds)
        curves.append((path.stem, median, None, None))
    if references:
        summary["references"] = references
    summary["run"] = {
        "command": " ".join(["alloop bench pool", *sys.argv[1:]]) if sys.argv else "alloop bench pool",
        "data": str(problem.data),
        "objective": objective,
        "direction": "maximize" if maximize else "minimize",
        "acquisition": acquisition,
        "batch_size": batch,
        "max_experiments": max_experiments,
        "wall_seconds": round(time.time() - started, 1),
    }
    if plot is not None:
        bench_pool.plot_top_percent(plot, problem, curves)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        Console().print(summary_table(summary, f"{data.name}: {acquisition}"))


@app.command("overhead")
def overhead_command(
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes (n 50, pool 2000), for tests.")] = False,
    ns: Annotated[str | None, typer.Option("--n", help="Comma-separated numbers of observations.")] = None,
    pools: Annotated[str | None, typer.Option("--pools", help="Comma-separated pool sizes.")] = None,
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated: naive,exact,mixed,love.")
    ] = "naive,exact,mixed,love",
    max_seconds: Annotated[
        float, typer.Option("--max-seconds", min=0.0, help="Extrapolate cells estimated longer than this.")
    ] = 120.0,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads per cell.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Time and peak memory of one decision (fit, score the pool, pick 4): ours against naive BoTorch."""
    from loop.bench import overhead

    def sizes(text: str | None, default: tuple[int, ...], hint: str) -> list[int]:
        if text is None:
            return list(default)
        try:
            return [int(float(v)) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise typer.BadParameter(f"not a list of integers: {text!r}", param_hint=hint) from err

    try:
        result = overhead.run_overhead(
            sizes(ns, overhead.QUICK_NS if quick else overhead.FULL_NS, "--n"),
            sizes(pools, overhead.QUICK_POOLS if quick else overhead.FULL_POOLS, "--pools"),
            [m.strip() for m in methods.split(",") if m.strip()],
            max_seconds=max_seconds,
            threads=threads,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"decision overhead ({result['threads']} threads)")
    for column in ("n", "pool", "method", "status", "score s", "pick s", "peak MB", "x naive", "x bound"):
        table.add_column(column, justify="right")
    for c in result["cells"]:
        mb = c.get("peak_memory_bytes")
        table.add_row(
            str(c["n"]),
            str(c["pool"]),
            c["method"],
            c["status"],
            fmt(c.get("score_seconds")),
            fmt(c.get("pick_seconds")),
            fmt(None if mb is None else mb / 2**20),
            fmt(c.get("speedup_vs_naive")),
            fmt(c.get("ratio_to_bound")),
        )
    Console().print(table)
