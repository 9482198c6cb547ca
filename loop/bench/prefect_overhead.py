"""What Prefect adds: time per cycle and per oracle task of :mod:`flows` against the plain loop.

The same campaign (same seed, so the same fits, proposals and measurements) runs twice from
an empty ledger: once engine-free (:meth:`Campaign.run`) and once as a flow
(:func:`flows.campaign.campaign_flow`, thread runner) against a temporary Prefect server. The
oracle is made instant (no latency, no failures), so the difference is Prefect's bookkeeping:
task and flow runs, state changes, artifacts, the campaign lock. A second measurement submits
evaluation tasks alone, to price one oracle task.

Prefect is imported only when :func:`run_prefect_overhead` runs: :mod:`loop` does not
depend on it.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from loop.campaign import Campaign
from loop.config import parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "simulated_lab" / "campaign.toml"


def _instant_config(source: Path, ledger: Path, max_experiments: int, acquisition: str | None) -> Any:
    data = tomllib.loads(source.read_text())
    if acquisition is not None:
        data.setdefault("acquisition", {})["type"] = acquisition
    data.pop("execution", None)
    data["campaign"]["ledger"] = str(ledger)
    data["oracle"].update(latency_s=0.0, failure_probability=0.0, invalid_probability=0.0)
    data["oracle"].pop("journal", None)
    data["stopping"] = {"max_experiments": max_experiments}
    return parse_config(data, base_dir=source.parent.resolve(), source=str(source))


def run_prefect_overhead(
    config: str | Path = EXAMPLE,
    max_experiments: int = 16,
    tasks: int = 50,
    repeats: int = 2,
    acquisition: str | None = None,
) -> dict[str, Any]:
    """Measure Prefect's added time per cycle and per oracle task.

    Args:
        config: The campaign file (default: the simulated-lab example); its oracle is made
            instant and its budget set to ``max_experiments``.
        max_experiments: The budget of each run (cycles follow from the batch sizes).
        tasks: Oracle tasks submitted for the per-task measurement.
        repeats: Runs of each kind; the median is reported.
        acquisition: Override of ``[acquisition] type`` (``"random"`` makes cycles cheap, which
            isolates Prefect's fixed cost per cycle from the machine's noise).

    Returns:
        Seconds per cycle (engine-free, flow, added), seconds per oracle task (direct call,
        Prefect task, added), the server's start-up time, and the setting.
    """
    if max_experiments < 1 or tasks < 1 or repeats < 1:
        raise ValueError("max_experiments, tasks and repeats must be >= 1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    started = time.perf_counter()
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness
    from prefect.utilities.annotations import quote

    from flows.campaign import campaign_flow
    from flows.execution import ExecutionSection
    from flows.tasks import evaluate_candidate

    import_s = time.perf_counter() - started
    source = Path(config)
    plain_cycle_s: list[float] = []
    flow_cycle_s: list[float] = []
    direct_task_s: list[float] = []
    prefect_task_s: list[float] = []
    cycles = 0
    work: dict[str, Any] = {}

    @flow(name="prefect-overhead-tasks", persist_result=False)
    def submit_tasks() -> None:
        task_runner: ThreadPoolTaskRunner[dict[str, Any]] = ThreadPoolTaskRunner(max_workers=1)
        with task_runner as runner:
            futures = [
                runner.submit(evaluate_candidate, {"candidate": c, "oracle": quote(work["oracle"])})
                for c in work["batch"]
            ]
            for future in futures:
                future.result()

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=120):
            server_s = time.perf_counter() - started
            for repeat in range(repeats):
                plain_config = _instant_config(
                    source, Path(folder) / f"plain{repeat}.db", max_experiments, acquisition
                )
                campaign = Campaign(plain_config)
                started = time.perf_counter()
                report = campaign.run()
                plain_cycle_s.append((time.perf_counter() - started) / report.cycles_run)
                cycles = report.cycles_run
                candidates = [e.candidate for e in campaign.ledger.evaluations(campaign.id)]
                oracle = campaign.oracle
                campaign.close()

                flow_config = _instant_config(
                    source, Path(folder) / f"flow{repeat}.db", max_experiments, acquisition
                )
                started = time.perf_counter()
                flowed = campaign_flow(flow_config, execution=ExecutionSection())
                flow_cycle_s.append((time.perf_counter() - started) / flowed.cycles_run)
                if flowed.cycles_run != cycles:
                    raise RuntimeError(f"the flow ran {flowed.cycles_run} cycles, the loop {cycles}")

                batch = (candidates * (tasks // len(candidates) + 1))[:tasks]
                started = time.perf_counter()
                for candidate in batch:
                    oracle.evaluate(candidate)
                direct_task_s.append((time.perf_counter() - started) / tasks)

                work.update(oracle=oracle, batch=batch)
                submit_tasks()  # warm: the first flow run of a process pays for set-up
                started = time.perf_counter()
                submit_tasks()
                prefect_task_s.append((time.perf_counter() - started) / tasks)
    plain, flowed_s = statistics.median(plain_cycle_s), statistics.median(flow_cycle_s)
    direct, prefect = statistics.median(direct_task_s), statistics.median(prefect_task_s)
    return {
        "config": str(source),
        "acquisition": acquisition or "as configured",
        "max_experiments": max_experiments,
        "cycles": cycles,
        "repeats": repeats,
        "tasks": tasks,
        "engine_free_s_per_cycle": round(plain, 4),
        "flow_s_per_cycle": round(flowed_s, 4),
        "added_s_per_cycle": round(flowed_s - plain, 4),
        "direct_s_per_evaluation": round(direct, 6),
        "prefect_s_per_task": round(prefect, 4),
        "added_s_per_task": round(prefect - direct, 4),
        "prefect_import_s": round(import_s, 2),
        "server_startup_s": round(server_s, 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def prefect_overhead(
    config: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Campaign TOML file.")] = EXAMPLE,
    max_experiments: Annotated[int, typer.Option(min=1, help="Budget of each run.")] = 16,
    tasks: Annotated[int, typer.Option(min=1, help="Oracle tasks for the per-task measurement.")] = 50,
    repeats: Annotated[int, typer.Option(min=1, help="Runs of each kind (median reported).")] = 2,
    acquisition: Annotated[
        str | None, typer.Option(help="Override [acquisition] type ('random': cheap cycles).")
    ] = None,
) -> None:
    """Prefect's added time per cycle and per oracle task, against the engine-free loop (JSON)."""
    import json

    typer.echo(
        json.dumps(run_prefect_overhead(config, max_experiments, tasks, repeats, acquisition), indent=2)
    )


if __name__ == "__main__":
    typer.run(prefect_overhead)
