"""``alloop lab``: run the reference self-driving lab (``python -m oracles.lab.cli serve`` too)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="The reference self-driving lab: the robot contract over HTTP, backed by the emulator.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _lab() -> None:
    """The reference self-driving lab: the robot contract over HTTP, backed by the emulator."""


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="ALLOOP_LAB_TOKEN",
            show_envvar=True,
            show_default=False,
            help="Bearer token clients must send (prefer the environment variable: a command "
            "line is visible to other users of the machine).",
        ),
    ] = None,
    db: Annotated[Path, typer.Option(help="The lab's SQLite database (survives restarts).")] = Path("lab.db"),
    instruments: Annotated[int, typer.Option(min=1, help="Instruments working in parallel (k).")] = 4,
    latency: Annotated[float, typer.Option(min=0, help="Seconds one run occupies an instrument.")] = 0.5,
    program: Annotated[str, typer.Option(help="Default program: 'branin' or 'thin_film'.")] = "branin",
    failure_probability: Annotated[
        float, typer.Option(min=0, max=1, help="Runs that fail (retryable).")
    ] = 0.0,
    fatal_probability: Annotated[float, typer.Option(min=0, max=1, help="Runs that fail for good.")] = 0.0,
    error_probability: Annotated[float, typer.Option(min=0, max=1, help="Requests answered with 5xx.")] = 0.0,
    drop_probability: Annotated[
        float, typer.Option(min=0, max=1, help="Requests handled whose response is cut off.")
    ] = 0.0,
    slow_probability: Annotated[float, typer.Option(min=0, max=1, help="Requests answered late.")] = 0.0,
    slow_s: Annotated[float, typer.Option(min=0, help="How late a slow answer is (s).")] = 2.0,
    max_body_bytes: Annotated[int, typer.Option(min=1024, help="Larger request bodies get 413.")] = 64 * 1024,
    seed: Annotated[int, typer.Option(help="Seed of noise and injected faults.")] = 0,
    journal: Annotated[
        Path | None, typer.Option(help="Append every experiment started and finished here (JSON lines).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level of the server.")] = "info",
) -> None:
    """Serve the lab until interrupted; queued runs wait in --db for the next start."""
    import uvicorn

    from oracles.lab.app import create_app
    from oracles.lab.instruments import Faults, Lab
    from oracles.lab.store import LabStore

    if not token:
        raise typer.BadParameter("set ALLOOP_LAB_TOKEN (or pass --token)", param_hint="--token")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        faults = Faults(
            failure_probability=failure_probability,
            fatal_probability=fatal_probability,
            error_probability=error_probability,
            drop_probability=drop_probability,
            slow_probability=slow_probability,
            slow_s=slow_s,
            seed=seed,
        )
        lab = Lab(
            LabStore(db),
            instruments=instruments,
            latency_s=latency,
            faults=faults,
            default_program=program,
            seed=seed,
            journal=journal,
        )
        application = create_app(lab, token, max_body_bytes=max_body_bytes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"alloop lab on http://{host}:{port} ({instruments} instrument(s), db {db})", err=True)
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level=log_level.lower(),
        http="h11",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    app()
