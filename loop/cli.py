"""The ``alloop`` command line."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
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
_debug = {"on": False}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    _debug["on"] = debug


def _fail(exc: BaseException) -> typer.Exit:
    message = " ".join(str(exc).split("\n"))
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@contextmanager
def _one_line_errors(ledger: str | None = None) -> Iterator[None]:
    """Turn every alloop error and database error into one line on stderr and exit code 2
    (the traceback only with ``--debug``); ``ledger`` names the database in the message."""
    from sqlalchemy.exc import SQLAlchemyError

    from loop.database import database_reason, masked

    try:
        yield
    except (AlloopError, SQLAlchemyError, sqlite3.Error) as exc:
        if _debug["on"]:
            raise
        if isinstance(exc, AlloopError):
            raise _fail(exc) from None
        where = f"ledger {masked(ledger)!r}: " if ledger else ""
        raise _fail(LedgerError(f"{where}database error: {database_reason(exc)}")) from None


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Campaign TOML file.")],
    max_cycles: Annotated[int | None, typer.Option(min=1, help="Run at most this many cycles now.")] = None,
    db: Annotated[str | None, typer.Option(help="Ledger file or URL (overrides [campaign] ledger).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run (or resume) a campaign until a stopping rule fires."""
    from loop.campaign import Campaign, CycleReport
    from loop.database import masked
    from loop.report import describe_best

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with _one_line_errors(db):
        campaign = Campaign.from_file(config, ledger=db)
    with _one_line_errors(campaign.ledger.url), _progress(quiet) as progress:
        try:
            done_before, _ = campaign.ledger.spent(campaign.id)
            task = progress.add_task(
                campaign.name, total=campaign.config.stopping.max_experiments, completed=done_before, best=""
            )

            def show(report: CycleReport) -> None:
                best = "" if report.best is None else f"best {report.best:.4g}"
                progress.update(task, completed=report.experiments, best=f"cycle {report.cycle}  {best}")

            report = campaign.run(max_cycles=max_cycles, on_cycle=show, label="alloop run")
        finally:
            campaign.close()
    console.print(
        f"[bold]{report.name}[/]: {report.cycles_run} cycle(s) run, {report.experiments} experiments, "
        f"stopped: {report.stop_reason or 'cycle limit reached'}",
        highlight=False,
    )
    if report.best is not None:
        units = {o.name: o.unit for o in campaign.config.objectives}
        console.print(f"best: {describe_best(report.best, units)}", highlight=False)
    console.print(f"ledger: {masked(campaign.ledger.url)}", highlight=False)


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )


@app.command()
def status(
    db: Annotated[str, typer.Argument(help="Ledger file or URL.")],
    campaign: Annotated[
        str | None, typer.Option(help="Campaign name (needed when the ledger holds several).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Pareto search: write the front and hypervolume per cycle (PNG).")
    ] = None,
) -> None:
    """Show a campaign: cycles, evaluations by status, best so far (a Pareto search: its
    front and hypervolume per cycle)."""
    from loop.calibration import describe_summary
    from loop.report import campaign_calibration, campaign_status, describe_best

    with _one_line_errors(db), Ledger(db, create=False) as ledger:
        summary = campaign_status(ledger, campaign)
        summary["calibration"] = campaign_calibration(ledger, campaign)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    table = Table(title=f"campaign {summary['campaign']}", show_header=False)
    table.add_row("cycles", str(summary["cycles"]))
    for state, count in summary["evaluations"].items():
        table.add_row(state, str(count))
    table.add_row("cost", f"{summary['cost']:g}")
    for name, spent in summary.get("fidelities", {}).items():
        target = " (target)" if name == summary["target_fidelity"] else ""
        table.add_row(
            f"fidelity {name}{target}",
            f"{spent['experiments']} experiments, cost {spent['cost']:g} "
            f"({spent['cost_per_evaluation']:g} each)",
        )
    best = summary["best"]
    table.add_row("best", "—" if best is None else describe_best(best, summary["units"]))
    table.add_row("stopped", summary["stop_reason"] or "no (it may go on)")
    for name, numbers in summary["calibration"]["objectives"].items():
        table.add_row(f"calibration {name}", f"predictive: {describe_summary(numbers['predictive'])}")
        table.add_row("", f"latent: {describe_summary(numbers['latent'])}")
    used = summary["calibration"]["std_used"]
    table.add_row("stopping rules use", used["stopping"])
    table.add_row("acquisition uses", used["acquisition"])
    Console().print(table)
    if summary.get("pareto"):
        from loop.labreport import pareto_table
        from loop.pareto import plot_pareto

        Console().print(pareto_table(summary["pareto"]))
        if plot is not None:
            console.print(f"wrote {plot_pareto(summary['pareto'], plot)}", highlight=False)


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
        with _one_line_errors(db), Ledger(db, create=False) as ledger:
            frames = write_extxyz(ledger, campaign, output)
        console.print(f"wrote {frames} labelled structures to {output}", highlight=False)
        return
    with _one_line_errors(db), Ledger(db, create=False) as ledger:
        table = evaluations_table(ledger, campaign)
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
    from loop.lease import CampaignLease
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

    with _one_line_errors():
        settings = load_otf_config(config)
        # mace-torch prints a notice on import, in the training workers too: keep --json's stdout clean
        with (
            Ledger(settings.ledger_location) as ledger,
            CampaignLease(ledger, settings.run.name, "alloop otf"),  # before building: it settles frames
            stdout_to_stderr(),
        ):
            run = build_otf_run(settings, ledger, on_round=show)
            try:
                report = run.run()
            finally:
                run.committee.close()
                run.oracle.close()
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


def _mount_subcommands() -> None:
    from loop.bench.cli import app as bench_app
    from loop.bench.throughput import throughput
    from oracles.lab.cli import app as lab_app

    bench_app.command("throughput")(throughput)
    app.add_typer(
        bench_app, name="bench", help="Benchmarks: sample efficiency, decision overhead, throughput."
    )
    app.add_typer(lab_app, name="lab", help="The reference self-driving-lab server.")
    _mount_plugins()


def _mount_plugins() -> None:
    """Commands that other packages register in the ``alloop.commands`` entry-point group
    (``alloop deploy`` comes from :mod:`flows.cli`): a function becomes a command, a Typer
    app a command group, under the entry point's name. The loop never imports them itself."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="alloop.commands"):
        command = entry.load()
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=entry.name)
        else:
            app.command(entry.name)(command)


_mount_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
