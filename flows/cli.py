"""``alloop deploy``: serve a campaign on a schedule (mounted on the ``alloop`` app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from loop.errors import AlloopError

console = Console(stderr=True)


def deploy(
    config: Annotated[Path, typer.Argument(help="Campaign TOML file.")],
    cron: Annotated[str, typer.Option(help='When to run, as a cron string, e.g. "*/30 * * * *".')],
    cycles_per_run: Annotated[int, typer.Option(min=1, help="Cycles each scheduled run advances.")] = 1,
    name: Annotated[str | None, typer.Option(help="Deployment name (default: the campaign's).")] = None,
) -> None:
    """Serve a Prefect deployment that advances the campaign on a schedule (until Ctrl-C).

    Each run resumes the campaign from its ledger, runs at most --cycles-per-run cycles, and
    reports in the Prefect UI; a run that finds another run of the campaign still working exits.
    """
    from flows.deploy import serve_campaign

    try:
        serve_campaign(config, cron, cycles_per_run, name)
    except (AlloopError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=2) from None


app = typer.Typer(name="flows", help="Prefect flows around the campaign loop.", add_completion=False)
app.command()(deploy)

if __name__ == "__main__":
    app()
