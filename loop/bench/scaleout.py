"""Scale-out through Slurm: N EMT relaxations on adaptive Slurm workers killed at their walltime.

One campaign over the 1,078 fcc Cu–Au–Pd orderings of up to 6 atoms (random proposals, so the
figure measures the scale-out path, not the surrogate) is run twice with the same seed: in
process (the engine-free loop), then as a Prefect flow whose evaluations go to Dask workers in
Slurm batch jobs (``dask_jobqueue.SLURMCluster``, adaptive 1 to ``max_jobs`` jobs) with a
walltime short enough that Slurm kills workers in the middle of their batches. It reports
evaluations per minute, how many evaluations were lost (no outcome in the ledger) or
duplicated (a relaxation that ran to the end twice: two job folders with a result), how many
relaxations were cut short and started again, the jobs by how they ended, and whether both
ledgers hold the same candidates with the same values.

Needs a Slurm whose commands work here (``SLURM_CONF``; ``python -m tests.slurm.cluster
start FOLDER`` starts a local one) and dask-jobqueue (the ``slurm`` extra).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import typer

CAMPAIGN = """
[campaign]
name = "scaleout"
seed = {seed}
ledger = "{name}.db"

[space.generator]
type = "structures"
elements = ["Cu", "Au", "Pd"]
lattice = "fcc"
max_atoms = 6
cache = "candidates.json"

[[objectives]]
name = "formation_energy_per_atom"
direction = "minimize"

[acquisition]
type = "random"
batch_size = {batch_size}
initial_designs = {batch_size}

[oracle]
type = "dft"
calculator = "emt"
mode = "relax"
relax_cell = false
fmax = 0.05
steps = 200
wall_time_s = 120
workdir = "runs-{name}"
capacity = 2

[stopping]
max_experiments = {n}
"""

EXECUTION = """
[execution]
task_runner = "dask"
cluster_class = "dask_jobqueue.SLURMCluster"
cluster_kwargs = {{ cores = 1, processes = 1, memory = "1GB", walltime = "{walltime}", \
interface = "lo", nanny = false, log_directory = "{logs}" }}
adapt_kwargs = {{ minimum = 1, maximum = {max_jobs}, wait_count = 30 }}
evaluations_per_task = {per_task}
retries = 2
retry_delay_s = 5
"""


class SlurmUnavailable(RuntimeError):
    """Slurm's commands are not found or do not answer: the benchmark cannot start."""


def _interrupted(error: str | None) -> bool:
    """Whether a ledger error is an interruption (``<class>: interrupted: ...``): its workers
    were all lost, or its job was killed from outside on every attempt."""
    return (error or "").partition(": ")[2].startswith("interrupted")


class JobMonitor(threading.Thread):
    """Polls ``squeue`` for every job's last state (Slurm forgets ended jobs after MinJobAge)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.states: dict[str, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            out = subprocess.run(
                ["squeue", "--noheader", "--states=all", "--format=%i %T"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            for line in out.splitlines():
                job, _, state = line.strip().partition(" ")
                if job:
                    self.states[job] = state


def _ledger_rows(config_path: Path) -> list[tuple[Any, ...]]:
    """Cycle, candidate, status and values (to 9 digits) of every evaluation, in proposal order."""
    from loop.config import load_config
    from loop.ledger import Ledger

    with Ledger(load_config(config_path).ledger_location) as ledger:
        rows = ledger.evaluations(int(ledger.campaign()["id"]))
    return [
        (e.cycle, e.candidate_id, e.status, {k: round(v, 9) for k, v in e.values.items()}, e.error)
        for e in rows
    ]


def _relaxations(runs: Path) -> tuple[Counter[str], int]:
    """Per candidate, the relaxations that ran to the end (job folders with a result), and
    the relaxations cut short (folders without one). Elemental references are not counted."""
    finished: Counter[str] = Counter()
    cut = 0
    for folder in runs.glob("*/*"):
        if not folder.is_dir() or folder.name.startswith("reference-"):
            continue
        if (folder / "result.json").is_file():
            finished[folder.name.split("-")[0]] += 1
        else:
            cut += 1
    return finished, cut


def run_scaleout(
    n: int = 1000,
    max_jobs: int = 4,
    walltime: str = "00:01:00",
    per_task: int = 8,
    batch_size: int = 100,
    seed: int = 3,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the in-process and the Slurm campaign and compare them.

    Args:
        n: EMT relaxations (at most 1,078, the space's size).
        max_jobs: Adaptive scaling's maximum of Slurm jobs (one single-core worker each).
        walltime: The jobs' walltime (Slurm counts whole minutes, ``"00:01:00"`` at least).
        per_task: Relaxations per Dask task (``evaluations_per_task``).
        batch_size: Candidates proposed per cycle.
        seed: Campaign seed.
        workdir: Where the campaigns go (default: a temporary folder, removed afterwards).

    Returns:
        Parameters, evaluations per minute (Slurm and in-process), lost, duplicated, cut
        short, interrupted, jobs by final state, whether the ledgers are identical, versions.

    Raises:
        SlurmUnavailable: Slurm's commands are not found or do not answer.
    """
    if shutil.which("sbatch") is None:
        raise SlurmUnavailable("Slurm's sbatch is not on PATH (apt-get install slurm-wlm munge)")
    probe = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise SlurmUnavailable(f"sinfo failed: {probe.stderr.strip()} (is SLURM_CONF set?)")
    from flows.campaign import campaign_flow
    from loop.campaign import Campaign
    from loop.config import load_config

    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="scaleout-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        paths = {}
        for name in ("inprocess", "slurm"):
            text = CAMPAIGN.format(seed=seed, name=name, batch_size=batch_size, n=n)
            if name == "slurm":
                text += EXECUTION.format(
                    walltime=walltime, logs=folder / "logs", max_jobs=max_jobs, per_task=per_task
                )
            paths[name] = folder / f"{name}.toml"
            paths[name].write_text(text)

        campaign = Campaign(load_config(paths["inprocess"]))  # generates the shared candidate cache
        start = time.perf_counter()
        campaign.run()
        campaign.close()
        inprocess_s = time.perf_counter() - start

        monitor = JobMonitor()
        monitor.start()
        start = time.perf_counter()
        try:
            campaign_flow(str(paths["slurm"]))
        finally:
            slurm_s = time.perf_counter() - start
            time.sleep(2 * monitor.interval_s)
            monitor.done.set()
            monitor.join()

        slurm_rows, plain_rows = _ledger_rows(paths["slurm"]), _ledger_rows(paths["inprocess"])
        finished, cut = _relaxations(folder / "runs-slurm")
        done = sum(1 for r in slurm_rows if r[2] == "done")
        return {
            "benchmark": "scaleout",
            "n": n,
            "max_jobs": max_jobs,
            "walltime": walltime,
            "evaluations_per_task": per_task,
            "batch_size": batch_size,
            "seed": seed,
            "evaluations": len(slurm_rows),
            "done": done,
            "failed": len(slurm_rows) - done,
            "interrupted": sum(1 for r in slurm_rows if _interrupted(r[4])),
            "lost": sum(1 for r in slurm_rows if r[2] in ("proposed", "submitted")) + n - len(slurm_rows),
            "duplicated": sum(1 for count in finished.values() if count > 1),
            "relaxations_cut_short": cut,
            "jobs": dict(Counter(monitor.states.values())),
            "identical_to_in_process": slurm_rows == plain_rows,
            "slurm_wall_s": round(slurm_s, 1),
            "evaluations_per_minute": round(done / slurm_s * 60, 1),
            "in_process_wall_s": round(inprocess_s, 1),
            "in_process_evaluations_per_minute": round(len(plain_rows) / inprocess_s * 60, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}",
            "versions": {
                "slurm": subprocess.run(["sinfo", "-V"], capture_output=True, text=True).stdout.strip(),
                **{p: version(p) for p in ("dask", "distributed", "dask-jobqueue", "prefect", "ase")},
            },
        }
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)


def scaleout(
    n: Annotated[int, typer.Option(min=1, max=1078, help="EMT relaxations.")] = 1000,
    max_jobs: Annotated[int, typer.Option(min=1, help="Adaptive scaling's maximum of Slurm jobs.")] = 4,
    walltime: Annotated[str, typer.Option(help="Walltime of each worker job (whole minutes).")] = "00:01:00",
    per_task: Annotated[int, typer.Option(min=1, help="Relaxations per Dask task.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1, help="Candidates proposed per cycle.")] = 100,
    seed: Annotated[int, typer.Option(help="Campaign seed.")] = 3,
    workdir: Annotated[Path | None, typer.Option(help="Keep the campaigns here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """N EMT relaxations through adaptive Slurm workers killed at their walltime, against an
    in-process run with the same seed: evaluations per minute, lost, duplicated."""
    try:
        result = run_scaleout(n, max_jobs, walltime, per_task, batch_size, seed, workdir)
    except SlurmUnavailable as exc:
        typer.echo(f"alloop bench scaleout: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        typer.echo(f"{key:>34}: {value}")
