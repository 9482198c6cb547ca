"""``alloop bench otf``: the on-the-fly MD training benchmark's command and its printed summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loop.bench.display import fmt


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
                f"miss rate {fmt(numbers['miss_rate'])}, {numbers['wall_s']:.0f} s",
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
        table.add_row(name, *(fmt(v.get(k)) for k in keys))
    Console().print(table)
    Console().print(f"RDF noise floor (oracle replica, other seeds): {fmt(result['rdf_noise_floor'])}")
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
        cells = [f"{fmt(f['mean'])} ± {fmt(f['std'])}" if (f := figures.get(k)) else "" for k in keys]
        table.add_row(name, *cells)
    Console().print(table)
    for baseline, c in summary["calibrated_against"].items():
        Console().print(
            f"calibrated vs {baseline}: lower force RMSE in {c['wins']} of {c['runs']} runs "
            f"(mean difference {fmt(c['mean_rmse_difference_ev_per_a'])} eV/Å), in the run "
            f"{c['in_run_wins']} of {c['runs']} ({fmt(c['in_run_mean_rmse_difference_ev_per_a'])} eV/Å); "
            f"never more calls: {c['never_more_calls']}"
        )
    _print_acceptance(summary["acceptance"])


def _print_acceptance(acceptance: dict[str, bool | None]) -> None:
    for criterion, holds in acceptance.items():
        Console().print(f"{criterion}: {'n/a' if holds is None else holds}")
