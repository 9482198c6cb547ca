"""Throughput of a closed loop against the reference lab over loopback HTTP.

A campaign proposes batches of ``k`` candidates (one per instrument) to a reference lab with
``k`` simulated instruments of fixed latency and no faults, through the robot oracle. The
ideal loop keeps every instrument busy: one cycle per ``latency_s``. The benchmark reports
cycles per minute achieved against that ideal, as a utilisation ratio, and splits each
cycle's wall time into the lab's span (first submission to last result) and everything else
(surrogate fit, acquisition, ledger, HTTP).

Mount the command with ``bench_app.command("throughput")(throughput)``, or call
:func:`run_throughput`.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

ACQUISITION_SETTINGS = {"num_restarts": 2, "raw_samples": 64, "mc_samples": 32, "max_iterations": 30}


def run_throughput(
    instruments: int = 4,
    latency_s: float = 0.5,
    cycles: int = 10,
    acquisition: str = "none",
    events: bool = True,
    poll_interval_s: float = 0.05,
    seed: int = 0,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Run one throughput measurement and return its numbers.

    Args:
        instruments: Simulated instruments (k); each cycle proposes k candidates.
        latency_s: Seconds one run occupies an instrument.
        cycles: Cycles to run (``cycles * k`` experiments).
        acquisition: ``"none"``: no campaign, the oracle alone in a submit-and-wait loop
            (the robot path's own overhead: client, HTTP, server, instruments); else the
            campaign's acquisition type (``"random"``: the campaign loop with its GP fit but
            random proposals; ``"qlognei"``: fit plus acquisition optimisation).
        events: Follow runs by server-sent events (else by polling).
        poll_interval_s: First poll interval (and cap) when polling.
        seed: Campaign seed.
        workdir: Where the lab and ledger databases go (default: a temporary folder).

    Returns:
        Parameters, wall time, cycles per minute (achieved and ideal), utilisation (by the
        ideal and by the lab's own instrument-busy time) and the median split of a cycle.
    """
    from loop.campaign import Campaign, CycleReport
    from loop.config import parse_config
    from oracles.lab import Lab, LabServer, LabStore
    from oracles.robot import RobotOracle

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        lab = Lab(LabStore(folder / "throughput-lab.db"), instruments=instruments, latency_s=latency_s)
        name = f"throughput-{acquisition}-{'sse' if events else 'poll'}-{secrets.token_hex(3)}"
        with LabServer(lab, token) as server:
            config = parse_config(
                {
                    "campaign": {"name": name, "seed": seed, "ledger": str(folder / "throughput-ledger.db")},
                    "space": {
                        "parameters": [
                            {"name": "x1", "type": "continuous", "lower": -5, "upper": 10},
                            {"name": "x2", "type": "continuous", "lower": 0, "upper": 15},
                        ]
                    },
                    "objectives": [{"name": "y", "direction": "minimize"}],
                    "acquisition": {
                        "type": "random" if acquisition == "none" else acquisition,
                        "batch_size": instruments,
                        "initial_designs": instruments,
                        **ACQUISITION_SETTINGS,
                    },
                    "oracle": {"type": "robot", "url": server.url, "program": "branin"},
                    "stopping": {"max_experiments": cycles * instruments},
                }
            )
            oracle = RobotOracle(
                server.url,
                token,
                name,
                {"y": ""},
                program="branin",
                poll_interval_s=poll_interval_s,
                max_poll_interval_s=poll_interval_s,
                events=events,
            )
            marks: list[float] = []
            started = time.perf_counter()
            if acquisition == "none":
                cycle_of = _oracle_loop(oracle, config, cycles, instruments, seed, marks)
                done, experiments = cycles, cycles * instruments
                wall = time.perf_counter() - started
                oracle.close()
            else:
                campaign = Campaign(config, oracle=oracle)

                def mark(_report: CycleReport) -> None:
                    marks.append(time.perf_counter())

                started = time.perf_counter()
                try:
                    report = campaign.run(on_cycle=mark)
                finally:
                    wall = time.perf_counter() - started
                    cycle_of = {e.candidate_id: e.cycle for e in campaign.ledger.evaluations(campaign.id)}
                    campaign.close()
                done, experiments = report.cycles_run, report.experiments
            runs = lab.store.runs(name)
    busy = sum(_seconds(r.started_at, r.finished_at) for r in runs if r.started_at and r.finished_at)
    spans: dict[int, tuple[float, float]] = {}
    for r in runs:
        if r.finished_at is None:
            continue
        cycle = cycle_of[r.candidate_id]
        first, last = _stamp(r.created_at), _stamp(r.finished_at)
        lo, hi = spans.get(cycle, (first, last))
        spans[cycle] = (min(lo, first), max(hi, last))
    cycle_walls = [b - a for a, b in zip([started, *marks[:-1]], marks, strict=True)]
    lab_spans = [hi - lo for lo, hi in (spans[c] for c in sorted(spans))]
    return {
        "instruments": instruments,
        "latency_s": latency_s,
        "acquisition": acquisition,
        "follow": "server-sent events" if events else f"polling every {poll_interval_s:g} s",
        "cycles": done,
        "experiments": experiments,
        "wall_s": round(wall, 3),
        "cycles_per_minute": round(60 * done / wall, 2),
        "ideal_cycles_per_minute": round(60 / latency_s, 2) if latency_s else None,
        "utilisation": round(done * latency_s / wall, 3),
        "instrument_busy_fraction": round(busy / (instruments * wall), 3),
        "median_cycle_s": round(statistics.median(cycle_walls), 3) if cycle_walls else None,
        "median_lab_span_s": round(statistics.median(lab_spans), 3) if lab_spans else None,
        "median_overhead_s": (
            round(statistics.median(w - s for w, s in zip(cycle_walls, lab_spans, strict=False)), 3)
            if cycle_walls and lab_spans
            else None
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}",
    }


def _oracle_loop(
    oracle: Any, config: Any, cycles: int, k: int, seed: int, marks: list[float]
) -> dict[str, int]:
    """Submit ``k`` random candidates, wait for all, repeat: the oracle without a campaign."""
    from loop.build import build_space

    space, _ = build_space(config)
    assert space is not None
    cycle_of: dict[str, int] = {}
    for cycle in range(cycles):
        batch = [space.candidate(p) for p in space.sample(k, seed + cycle)]
        for candidate in batch:
            cycle_of[candidate.id] = cycle
        for future in oracle.submit(batch):
            future.result()
        marks.append(time.perf_counter())
    return cycle_of


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _seconds(start: str, end: str) -> float:
    return _stamp(end) - _stamp(start)


def throughput(
    instruments: Annotated[int, typer.Option(min=1, help="Simulated instruments (k).")] = 4,
    latency: Annotated[float, typer.Option(min=0, help="Seconds per run.")] = 0.5,
    cycles: Annotated[int, typer.Option(min=1, help="Cycles to run.")] = 10,
    acquisition: Annotated[
        str,
        typer.Option(help="'none' (the oracle alone), or the campaign's acquisition: 'random', 'qlognei'..."),
    ] = "none",
    events: Annotated[bool, typer.Option("--events/--poll", help="Server-sent events or polling.")] = True,
    poll_interval: Annotated[float, typer.Option(min=0.001, help="Poll interval when polling (s).")] = 0.05,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Cycles per minute against the reference lab, and utilisation of its instruments."""
    result = run_throughput(instruments, latency, cycles, acquisition, events, poll_interval)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        typer.echo(f"{key:>26}: {value}")


throughput_app = typer.Typer(help="Closed-loop throughput against the reference lab.", add_completion=False)
throughput_app.command("throughput")(throughput)


if __name__ == "__main__":
    throughput_app()
