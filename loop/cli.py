"""The ``alloop`` command line."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loop.errors import AlloopError, LedgerError
from loop.ledger import Ledger

app = typer.Typer(
    name="alloop",
    help="Active-learning closed loops for materials discovery: surrogate → acquisition → oracle → ledger.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Campaign TOML file.")],
    max_cycles: Annotated[int | None, typer.Option(min=1, help="Run at most this many cycles now.")] = None,
    db: Annotated[str | None, typer.Option(help="Ledger file or URL (overrides [campaign] ledger).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run (or resume) a campaign until a stopping rule fires."""
    from loop.campaign import Campaign, CycleReport

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        campaign = Campaign.from_file(config, ledger=db)
    except AlloopError as exc:
        raise _fail(exc) from None
    budget = campaign.config.stopping.max_experiments
    done_before, _ = campaign.ledger.spent(campaign.id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as progress:
        task = progress.add_task(campaign.name, total=budget, completed=done_before, best="")

        def show(report: CycleReport) -> None:
            best = "" if report.best is None else f"best {report.best:.4g}"
            progress.update(task, completed=report.experiments, best=f"cycle {report.cycle}  {best}")

        try:
            report = campaign.run(max_cycles=max_cycles, on_cycle=show)
        except AlloopError as exc:
            raise _fail(exc) from None
        finally:
            campaign.close()
    console.print(
        f"[bold]{report.name}[/]: {report.cycles_run} cycle(s) run, {report.experiments} experiments, "
        f"stopped: {report.stop_reason or 'cycle limit reached'}",
        highlight=False,
    )
    if report.best is not None:
        console.print(f"best: {report.best['values']} at {report.best['params']}", highlight=False)
    console.print(f"ledger: {campaign.ledger.url}", highlight=False)


@app.command()
def status(
    db: Annotated[str, typer.Argument(help="Ledger file or URL.")],
    campaign: Annotated[
        str | None, typer.Option(help="Campaign name (needed when the ledger holds several).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a campaign: cycles, evaluations by status, best so far."""
    from loop.report import campaign_status

    try:
        with _open_ledger(db) as ledger:
            summary = campaign_status(ledger, campaign)
    except AlloopError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    table = Table(title=f"campaign {summary['campaign']}", show_header=False)
    table.add_row("cycles", str(summary["cycles"]))
    for state, count in summary["evaluations"].items():
        table.add_row(state, str(count))
    table.add_row("cost", f"{summary['cost']:g}")
    best = summary["best"]
    table.add_row("best", "—" if best is None else f"{best['values']} at {best['params']}")
    table.add_row("stopped", summary["stop_reason"] or "—")
    Console().print(table)


class ExportFormat(StrEnum):
    csv = "csv"
    extxyz = "extxyz"


@app.command()
def export(
    db: Annotated[str, typer.Argument(help="Ledger file or URL.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="Output format.")] = ExportFormat.csv,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    campaign: Annotated[str | None, typer.Option(help="Campaign name.")] = None,
) -> None:
    """Export every evaluation of a campaign (csv), or its labelled structures (extxyz,
    for MLIP training codes)."""
    from loop.report import evaluations_table

    if format is ExportFormat.extxyz:
        from loop.extxyz import write_extxyz

        if output is None:
            raise _fail(AlloopError("--format extxyz needs --output FILE"))
        try:
            with _open_ledger(db) as ledger:
                frames = write_extxyz(ledger, campaign, output)
        except AlloopError as exc:
            raise _fail(exc) from None
        console.print(f"wrote {frames} labelled structures to {output}", highlight=False)
        return
    try:
        with _open_ledger(db) as ledger:
            table = evaluations_table(ledger, campaign)
    except AlloopError as exc:
        raise _fail(exc) from None
    text = table.to_csv(index=False)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        console.print(f"wrote {len(table)} evaluations to {output}", highlight=False)


@app.command()
def otf(
    config: Annotated[Path, typer.Argument(help="On-the-fly MD TOML file (see examples/otf_md).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the final report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per round.")] = False,
) -> None:
    """Run (or resume) on-the-fly MD training: MD on an MLIP committee, the oracle when unsure."""
    from loop.otf import RoundReport, build_otf_run, load_otf_config
    from loop.stdio import stdout_to_stderr

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def show(r: RoundReport) -> None:
        if not quiet:
            mae = (
                ""
                if r.validation_force_mae is None
                else f", force MAE on new frames {r.validation_force_mae:.3f} eV/Å"
            )
            console.print(
                f"round {r.round}: {r.md_steps} MD steps, {r.oracle_calls} oracle calls, "
                f"{r.dataset_size} frames, threshold {r.threshold:.3f} eV/Å{mae} ({r.seconds:.1f} s)",
                highlight=False,
            )

    try:
        settings = load_otf_config(config)
        # mace-torch prints a notice on import, in the training workers too: keep --json's stdout clean
        with Ledger(settings.ledger_location) as ledger, stdout_to_stderr():
            run = build_otf_run(settings, ledger, on_round=show)
            try:
                report = run.run()
            finally:
                run.committee.close()
                run.oracle.close()
    except AlloopError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(report.as_dict(), indent=1))
        return
    console.print(
        f"{report.name}: {report.md_steps} MD steps, {report.oracle_calls} oracle calls "
        f"({100 * report.oracle_step_fraction:.2f}% of steps, {report.failed_calls} failed), "
        f"{report.rollbacks} rollbacks, threshold {report.threshold:.3f} eV/Å",
        highlight=False,
    )
    if report.stopped_calling:
        console.print(
            f"stopped calling the oracle at step {report.stopped_calling_at_step}: {report.stopped_calling}"
        )
    if report.final_fit_frames is not None:
        console.print(f"final fit: refitted from scratch on {report.final_fit_frames} frames")


def _open_ledger(db: str) -> Ledger:
    if "://" not in db and not Path(db).is_file():
        raise LedgerError(f"ledger {db!r} does not exist")
    return Ledger(db)


def _mount_subcommands() -> None:
    from flows.cli import deploy  # imports Prefect only when the command runs
    from loop.bench.cli import app as bench_app
    from loop.bench.throughput import throughput
    from oracles.lab.cli import app as lab_app

    bench_app.command("throughput")(throughput)
    app.add_typer(
        bench_app, name="bench", help="Benchmarks: sample efficiency, decision overhead, throughput."
    )
    app.add_typer(lab_app, name="lab", help="The reference self-driving-lab server.")
    app.command()(deploy)


_mount_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
