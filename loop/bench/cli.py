"""``alloop bench``: benchmark commands (metrics of pool-based campaigns, Liang et al. 2021 protocol)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loop.bench import metrics

app = typer.Typer(
    help="Benchmark active-learning campaigns on pooled data sets.",
    no_args_is_help=True,
)


@app.callback()
def _bench() -> None:
    """Benchmark active-learning campaigns on pooled data sets."""


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
