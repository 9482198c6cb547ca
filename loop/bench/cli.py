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
from loop.bench.scaleout import scaleout

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


app.command("scaleout")(scaleout)


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
        Console().print(_summary_table(summary, topcount.name))


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
        Console().print(_summary_table(summary, f"{data.name}: {acquisition}"))


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
            _fmt(c.get("score_seconds")),
            _fmt(c.get("pick_seconds")),
            _fmt(None if mb is None else mb / 2**20),
            _fmt(c.get("speedup_vs_naive")),
            _fmt(c.get("ratio_to_bound")),
        )
    Console().print(table)


@app.command("calibration")
def calibration_command(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Folder with crossed_barrel/ and oer_plate_3496/.")
    ] = Path("../shared/data"),
    campaigns: Annotated[int, typer.Option("--campaigns", min=1, help="Campaigns per pool and method.")] = 10,
    budget: Annotated[int, typer.Option("--budget", min=3, help="Experiments per campaign.")] = 100,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Designs per cycle.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")] = False,
) -> None:
    """Prequential coverage of the 90% interval before and after recalibration, and sample
    efficiency with and without it, on the crossed-barrel and OER pools."""
    from loop.bench.calibration import run_calibration_benchmark

    def progress(pool: str, method: str, k: int) -> None:
        if not quiet:
            print(f"{pool} calibration={method}: campaign {k + 1}/{campaigns} done", file=sys.stderr)

    try:
        result = run_calibration_benchmark(data_dir, campaigns, budget, batch, on_campaign=progress)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err), param_hint="--data-dir") from err
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, pool in result["pools"].items():
        table = Table(title=f"{name}: coverage of the 90% interval (pooled over {campaigns} campaigns)")
        table.add_column("std")
        table.add_column("coverage 90%")
        table.add_column("RMS z")
        for std, row in pool["coverage"].items():
            table.add_row(std, _fmt(row["coverage"]["0.9"]), _fmt(row["rms_z"]))
        Console().print(table)
    typer.echo(json.dumps(result["verdict"], indent=2))


@app.command("multifidelity")
def multifidelity_command(
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds (pools) per problem and method.")] = 10,
    problems: Annotated[str, typer.Option(help="Comma-separated: branin, hartmann.")] = "branin,hartmann",
    methods: Annotated[str, typer.Option(help="Comma-separated: single, mf_ucb, funnel, mf_mes.")] = (
        "single,mf_ucb,funnel"
    ),
    budget: Annotated[float, typer.Option("--budget", min=1.0, help="Total cost per run.")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")] = False,
) -> None:
    """Total cost to reach a regret target on BoTorch's AugmentedBranin and AugmentedHartmann:
    cost-aware multi-fidelity against single-fidelity qLogNEI and the fixed funnel, at equal
    total cost (benchmarks/RESULTS.md, "Multi-fidelity")."""
    from loop.bench.multifidelity import METHODS, PROBLEMS, Run, Settings, run_benchmark

    chosen_problems, chosen_methods = problems.split(","), methods.split(",")
    for name, chosen, known in (
        ("--problems", chosen_problems, PROBLEMS),
        ("--methods", chosen_methods, METHODS),
    ):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise typer.BadParameter(f"unknown {unknown}; known: {list(known)}", param_hint=name)

    def progress(problem: str, method: str, seed: int, run: Run) -> None:
        if not quiet:
            print(f"{problem} {method} seed {seed}: cost to target {run.cost_to_target:g}", file=sys.stderr)

    settings = Settings(budget=budget)
    result = run_benchmark(chosen_problems, chosen_methods, range(seeds), settings, progress)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for problem, numbers in result["problems"].items():
        table = Table(title=f"{problem}: cost to the regret target ({seeds} seeds, budget {budget:g})")
        for column in ("method", "reached", "median cost", "median target evaluations"):
            table.add_column(column)
        for method, row in numbers["methods"].items():
            table.add_row(
                method,
                f"{row['reached']}/{seeds}",
                _fmt(row["median_cost_to_target"]),
                _fmt(row["median_target_evaluations"]),
            )
        Console().print(table)
        typer.echo(json.dumps(numbers["decision"]))


@app.command("otf")
def otf_command(
    config: Annotated[
        Path,
        typer.Option("--config", exists=True, dir_okay=False, readable=True, help="On-the-fly MD TOML file."),
    ] = Path("examples/otf_md/otf.toml"),
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Override every walker's steps (a quick run).")
    ] = None,
    variants: Annotated[
        str | None,
        typer.Option(
            "--variants",
            help="Comma-separated subset of calibrated,fixed_threshold,every_kth (ground_truth always runs).",
        ),
    ] = None,
    label_every: Annotated[
        int | None,
        typer.Option("--label-every", min=1, help="k of every_kth [default: matched to calibrated's calls]."),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir", help="Keep each variant's ledger and runs in DIR/<variant> [default: temp]."
        ),
    ] = None,
    seeds: Annotated[
        int,
        typer.Option("--seeds", min=1, help="Runs of the protocol, each with its seeds shifted by one."),
    ] = 1,
    seed_offset: Annotated[
        int, typer.Option("--seed-offset", min=0, help="Shift of the first run's seeds.")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")] = False,
) -> None:
    """On-the-fly MD training against the oracle alone, a fixed threshold and every-k-th-step labelling."""
    from loop.bench import otf
    from loop.errors import ConfigError
    from loop.stdio import stdout_to_stderr

    picked = [] if variants is None else [v.strip() for v in variants.split(",") if v.strip()]
    chosen = otf.VARIANTS if variants is None else ("ground_truth", *picked)

    def variant_done(name: str, numbers: dict[str, Any]) -> None:
        if not quiet:
            typer.echo(
                f"[{name}] {numbers['md_steps']} MD steps, {numbers['oracle_calls']} oracle calls, "
                f"force RMSE {numbers['force_rmse_ev_per_a']:.4f} eV/Å, "
                f"miss rate {_fmt(numbers['miss_rate'])}, {numbers['wall_s']:.0f} s",
                err=True,
            )

    def round_done(name: str, report: otf.RoundReport) -> None:
        if not quiet and report.round % 10 == 0:
            typer.echo(
                f"[{name}] round {report.round}: {report.md_steps} MD steps, {report.oracle_calls} calls, "
                f"threshold {report.threshold:.3f} eV/Å",
                err=True,
            )

    options: dict[str, Any] = dict(
        steps=steps, variants=chosen, label_every=label_every, on_variant=variant_done, on_round=round_done
    )
    try:
        with stdout_to_stderr():  # mace-torch prints on import, in the training workers too
            if seeds == 1:
                result = otf.run_otf_benchmark(config, workdir, seed_offset=seed_offset, **options)
            else:
                offsets = range(seed_offset, seed_offset + seeds)
                result = otf.run_otf_seeds(config, offsets, workdir, **options)
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from err
    flags = [f"--config {config}"]
    flags += [f"--{k} {v}" for k, v in (("steps", steps), ("variants", variants)) if v is not None]
    flags += [f"--label-every {label_every}"] if label_every is not None else []
    flags += [f"--seeds {seeds}"] if seeds != 1 else []
    flags += [f"--seed-offset {seed_offset}"] if seed_offset else []
    result["command"] = " ".join(["alloop bench otf", *flags, *(["--json"] if as_json else [])])
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if seeds != 1:
        _print_otf_seeds(result["summary"], config)
        return
    table = Table(title=f"on-the-fly training: {config}")
    columns: tuple[str, ...] = ("variant", "oracle calls", "oracle/steps", "force RMSE eV/Å", "in the run")
    columns += ("energy MAE eV/atom",)
    for column in (*columns, "miss rate", "RDF diff", "wall s"):
        table.add_column(column, justify="right")
    for name, v in result["variants"].items():
        keys: tuple[str, ...] = (
            "oracle_calls",
            "oracle_step_fraction",
            "force_rmse_ev_per_a",
            "in_run_force_rmse_ev_per_a",
        )
        keys += ("energy_mae_ev_per_atom", "miss_rate", "rdf_difference", "wall_s")
        table.add_row(name, *(_fmt(v.get(k)) for k in keys))
    Console().print(table)
    Console().print(f"RDF noise floor (oracle replica, other seeds): {_fmt(result['rdf_noise_floor'])}")
    _print_acceptance(result["acceptance"])


def _print_otf_seeds(summary: dict[str, Any], config: Path) -> None:
    """Means (± standard deviation) over the runs of `alloop bench otf --seeds N`."""
    table = Table(title=f"on-the-fly training: {config}, {summary['runs']} seeds (mean ± sd)")
    keys: tuple[str, ...] = (
        "oracle_calls",
        "force_rmse_ev_per_a",
        "in_run_force_rmse_ev_per_a",
        "energy_mae_ev_per_atom",
    )
    keys += ("miss_rate", "rdf_difference")
    for column in ("variant", *keys):
        table.add_column(column, justify="right")
    for name, figures in summary["variants"].items():
        cells = [f"{_fmt(f['mean'])} ± {_fmt(f['std'])}" if (f := figures.get(k)) else "" for k in keys]
        table.add_row(name, *cells)
    Console().print(table)
    for baseline, c in summary["calibrated_against"].items():
        Console().print(
            f"calibrated vs {baseline}: lower force RMSE in {c['wins']} of {c['runs']} runs "
            f"(mean difference {_fmt(c['mean_rmse_difference_ev_per_a'])} eV/Å), in the run "
            f"{c['in_run_wins']} of {c['runs']} ({_fmt(c['in_run_mean_rmse_difference_ev_per_a'])} eV/Å); "
            f"never more calls: {c['never_more_calls']}"
        )
    _print_acceptance(summary["acceptance"])


def _print_acceptance(acceptance: dict[str, bool | None]) -> None:
    for criterion, holds in acceptance.items():
        Console().print(f"{criterion}: {'n/a' if holds is None else holds}")


def _summary_table(summary: dict[str, Any], title: str) -> Table:
    """Rich table of a `metrics.summarize` result.

    Args:
        summary: Output of `metrics.summarize`.
        title: Table title.

    Returns:
        A two-column (metric, value) table.
    """
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, _fmt(value))
    return table


def _fmt(value: Any) -> str:
    """Short text for a summary value."""
    if value is None:
        return "not reached"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


@app.command("feasibility")
def feasibility_command(
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Campaigns per arm (seeds 0..n-1).")] = 10,
    budget: Annotated[int, typer.Option("--budget", min=5, help="Experiments per campaign.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Learned feasibility against dropping failures on an emulated lab with a hidden failure region."""
    from loop.bench import feasibility

    def show(arm: str, seed: int, result: dict[str, Any]) -> None:
        Console(stderr=True).print(f"{arm} seed {seed}: {result}", highlight=False)

    result = feasibility.run(seeds, budget, on_run=show)
    result["command"] = f"alloop bench feasibility --seeds {seeds} --budget {budget}" + (
        " --json" if as_json else ""
    )
    typer.echo(json.dumps(result, indent=1) if as_json else json.dumps(result))


@app.command("discovery")
def discovery_command(
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Where the pool and its EMT ground truth are cached.")
    ] = Path("runs/bench-discovery"),
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per variant (0, 1, ...).")] = 5,
    budget: Annotated[int, typer.Option("--budget", min=2, help="EMT evaluations per campaign.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Candidates per round.")] = 50,
    max_atoms: Annotated[
        int, typer.Option("--max-atoms", min=1, help="Largest cell of the enumeration.")
    ] = 5,
    elements: Annotated[
        str, typer.Option("--elements", help="Comma-separated chemical system.")
    ] = "Cu,Ag,Au,Pd,Pt,Ni",
    prototypes: Annotated[bool, typer.Option(help="Substitute the built-in prototypes too.")] = True,
    variants: Annotated[
        str | None,
        typer.Option(
            "--variants", help="Comma-separated variants [default: random and the two pair-feature GPs]."
        ),
    ] = None,
    committee_probe: Annotated[
        int,
        typer.Option(
            "--committee-probe",
            min=0,
            help="Time one committee decision, scoring this many candidates (0: not).",
        ),
    ] = 0,
    decision_sizes: Annotated[
        str, typer.Option("--decision-sizes", help="Pool sizes of the seconds-per-decision timing.")
    ] = "10000,100000",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Structure discovery against an exhaustive EMT ground truth: evaluations to 95%/100% hull recall."""
    from loop.bench.discovery import VARIANTS, DiscoveryProtocol, run_benchmark
    from loop.structures import StructureSpaceOptions

    chosen = tuple(variants.split(",")) if variants else DiscoveryProtocol().variants
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    pool = StructureSpaceOptions(
        elements=elements.split(","),
        lattice=["fcc", "bcc", "hcp"],
        max_atoms=max_atoms,
        prototypes=["built-in"] if prototypes else [],
    )
    protocol = DiscoveryProtocol(
        pool, tuple(range(seeds)), budget, batch_size, min(batch_size, budget), variants=chosen
    )
    sizes = [int(s) for s in decision_sizes.split(",") if s]
    result = run_benchmark(
        protocol,
        workdir,
        sizes,
        committee_probe=committee_probe,
        progress=lambda line: print(line, file=sys.stderr),
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        Console().print_json(json.dumps({k: result[k] for k in result if k != "runs"}))


@app.command("prerelax")
def prerelax_command(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the DFT jobs run.")] = Path(
        "runs/bench-prerelax"
    ),
    calculator: Annotated[str, typer.Option("--calculator", help="The 'DFT': emt or gpaw.")] = "emt",
    model: Annotated[
        str, typer.Option("--model", help="The universal potential that pre-relaxes.")
    ] = "chgnet",
    elements: Annotated[
        str, typer.Option("--elements", help="Comma-separated elements of the alloy.")
    ] = "Cu,Au",
    max_atoms: Annotated[int, typer.Option("--max-atoms", min=1, max=12, help="Largest fcc cell.")] = 4,
    candidates: Annotated[int, typer.Option("--candidates", min=1, help="Orderings relaxed twice.")] = 30,
    rattle_a: Annotated[float, typer.Option("--rattle", min=0, help="Position rattle (Å, std).")] = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Draw of candidates and rattles.")] = 0,
    fmax: Annotated[float, typer.Option("--fmax", min=0.001, help="DFT force criterion (eV/Å).")] = 0.05,
    prerelax_fmax: Annotated[float, typer.Option("--prerelax-fmax", min=0.001, help="eV/Å.")] = 0.1,
    ecut_ev: Annotated[float, typer.Option("--ecut", min=50, help="GPAW plane-wave cut-off (eV).")] = 300.0,
    kpoint_density: Annotated[float, typer.Option("--kpoint-density", min=0.5, help="GPAW k/Å⁻¹.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """DFT ionic steps and wall time per relaxation, with and without universal-potential pre-relaxation."""
    from loop.bench import prerelax
    from oracles.dft_job import JobSettings
    from oracles.prerelax import PreRelaxation
    from surrogates.universal import universal_calculator

    chosen = prerelax.pick_candidates(elements.split(","), max_atoms, candidates, rattle_a, seed)
    settings = JobSettings(prerelax.calculator_spec(calculator, ecut_ev, kpoint_density), fmax_ev_per_a=fmax)
    potential = PreRelaxation(universal_calculator(model), model, fmax_ev_per_a=prerelax_fmax)

    def show(row: dict[str, Any]) -> None:
        Console(stderr=True).print(row, highlight=False)

    start = time.perf_counter()
    result = prerelax.run(chosen, settings, potential, workdir, on_candidate=show)
    result["wall_s"] = time.perf_counter() - start
    result["command"] = " ".join(["alloop bench prerelax", *sys.argv[3:]])
    typer.echo(json.dumps(result, indent=1) if as_json else json.dumps(result["summary"]))


@app.command("moo")
def moo_command(
    cases: Annotated[
        str, typer.Option("--cases", help="Comma-separated problem:q (branincurrin, dtlz2, thinfilm).")
    ] = "branincurrin:1,branincurrin:4,dtlz2:1,dtlz2:4,thinfilm:1",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Campaigns per arm (seeds 0..n-1).")] = 10,
    initial: Annotated[int, typer.Option("--initial", min=2, help="Sobol initial designs.")] = 6,
    evaluations: Annotated[
        int, typer.Option("--evaluations", min=1, help="Evaluations after the initial designs.")
    ] = 12,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Hypervolume after a fixed budget: alloop's qLogNEHVI and qParEGO against random and BayBE."""
    from loop.bench import moo

    def parse(item: str) -> tuple[str, int]:
        name, _, q = item.strip().partition(":")
        if name not in moo.problems() or not q.isdigit() or int(q) < 1:
            raise typer.BadParameter(f"--cases: {item!r} is not problem:q with a known problem")
        return name, int(q)

    def show(case: str, arm: str, seed: int, result: dict[str, Any]) -> None:
        Console(stderr=True).print(f"{case} {arm} seed {seed}: {result}", highlight=False)

    result = moo.run([parse(c) for c in cases.split(",")], seeds, initial, evaluations, on_run=show)
    result["command"] = (
        f"alloop bench moo --cases {cases} --seeds {seeds} --initial {initial} --evaluations {evaluations}"
        + (" --json" if as_json else "")
    )
    typer.echo(json.dumps(result, indent=1) if as_json else json.dumps(result))


@app.command("transfer")
def transfer_command(
    data: Annotated[Path, typer.Option("--data", help="Folder of the plates.")] = Path("../shared/data"),
    target: Annotated[str, typer.Option("--target", help="The new campaign's plate.")] = "oer_plate_3860",
    source: Annotated[str, typer.Option("--source", help="The past campaign's plate.")] = "oer_plate_3496",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Campaigns per arm (seeds 0..n-1).")] = 10,
    source_size: Annotated[int, typer.Option("--source-size", min=4, help="Source results used.")] = 100,
    budget: Annotated[int, typer.Option("--budget", min=3, help="Experiments per campaign at most.")] = 150,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """A new OER plate with a past plate (or unrelated data) as source, against a cold start."""
    from loop.bench import transfer

    paths = [data / name / f"{name}.csv" for name in (target, source)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        typer.echo(json.dumps({"benchmark": "transfer", "skipped": f"data not found: {missing}"}))
        return

    def show(arm: str, seed: int, result: dict[str, Any]) -> None:
        Console(stderr=True).print(f"{arm} seed {seed}: {result}", highlight=False)

    result = transfer.run(
        paths[0], paths[1], seeds=seeds, source_size=source_size, budget=budget, on_run=show
    )
    result["command"] = (
        f"alloop bench transfer --target {target} --source {source} --seeds {seeds} "
        f"--source-size {source_size} --budget {budget}" + (" --json" if as_json else "")
    )
    typer.echo(json.dumps(result, indent=1) if as_json else json.dumps(result))
