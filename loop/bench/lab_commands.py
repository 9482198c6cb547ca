"""``alloop bench`` commands of lab-grade optimisation: calibration, feasibility, moo, transfer."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loop.bench.display import fmt


def calibration_command(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Folder with crossed_barrel/ and oer_plate_3496/.")
    ] = Path("../shared/data"),
    campaigns: Annotated[int, typer.Option("--campaigns", min=1, help="Campaigns per pool and method.")] = 10,
    budget: Annotated[int, typer.Option("--budget", min=3, help="Experiments per campaign.")] = 100,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Designs per cycle.")] = 4,
    otf_draws: Annotated[
        int,
        typer.Option("--otf-draws", min=0, help="Draws of the on-the-fly example for its force coverage."),
    ] = 0,
    near_hull_seeds: Annotated[
        int, typer.Option("--near-hull-seeds", min=0, help="Seeds of the alloy example's near-hull rule.")
    ] = 0,
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Where the OTF draws and the near-hull truth go.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")] = False,
) -> None:
    """Prequential coverage of the 90% interval before and after recalibration, and sample
    efficiency with and without it (applied to every decision, or to the stopping rules only),
    on the crossed-barrel and OER pools; with ``--otf-draws`` the on-the-fly example's force
    coverage, with ``--near-hull-seeds`` the near-hull stopping rule on the alloy example."""
    from loop.bench.calibration import near_hull_rule, otf_force_coverage, run_calibration_benchmark

    def progress(pool: str, variant: str, k: int) -> None:
        if not quiet:
            print(f"{pool} {variant}: campaign {k + 1}/{campaigns} done", file=sys.stderr)

    try:
        result = run_calibration_benchmark(data_dir, campaigns, budget, batch, on_campaign=progress)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err), param_hint="--data-dir") from err
    with tempfile.TemporaryDirectory(prefix="alloop-bench-calibration-") as scratch:
        folder = Path(workdir) if workdir is not None else Path(scratch)
        if otf_draws:
            result["otf_forces"] = otf_force_coverage(otf_draws, workdir=folder / "otf")
        if near_hull_seeds:
            (folder / "near-hull").mkdir(parents=True, exist_ok=True)
            result["near_hull"] = near_hull_rule(near_hull_seeds, folder / "near-hull")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, pool in result["pools"].items():
        table = Table(title=f"{name}: coverage of the 90% interval (pooled over {campaigns} campaigns)")
        table.add_column("std")
        table.add_column("coverage 90%")
        table.add_column("RMS z")
        for std, row in pool["coverage"].items():
            table.add_row(std, fmt(row["coverage"]["0.9"]), fmt(row["rms_z"]))
        Console().print(table)
    extra = {k: result[k] for k in ("otf_forces", "near_hull") if k in result}
    verdicts = {k: v.get("goal_met", v.get("met")) for k, v in extra.items()}
    typer.echo(json.dumps({"verdict": result["verdict"], "default": result["default"], **verdicts}, indent=2))


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


def moo_command(
    cases: Annotated[
        str, typer.Option("--cases", help="Comma-separated problem:q (branincurrin, dtlz2, thinfilm).")
    ] = "branincurrin:1,branincurrin:4,dtlz2:1,dtlz2:4,thinfilm:1",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Campaigns per arm (seeds 0..n-1).")] = 10,
    initial: Annotated[int, typer.Option("--initial", min=2, help="Sobol initial designs.")] = 6,
    evaluations: Annotated[
        int, typer.Option("--evaluations", min=1, help="Evaluations after the initial designs.")
    ] = 12,
    arms: Annotated[
        str,
        typer.Option(
            "--arms",
            help="Comma-separated arms (random, qparego, qlognehvi, qlognehvi_tr, qlognehvi_tr_log, baybe).",
        ),
    ] = "random,qparego,qlognehvi,qlognehvi_tr,baybe",
    candidate: Annotated[
        str, typer.Option("--candidate", help="The alloop arm the decision rule judges against BayBE.")
    ] = "qlognehvi",
    first_seed: Annotated[
        int, typer.Option("--first-seed", min=0, help="Seeds first..first+seeds-1 (0: the protocol's).")
    ] = 0,
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

    chosen = [a.strip() for a in arms.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(moo.ARMS))
    if unknown or candidate not in chosen:
        raise typer.BadParameter(
            f"--arms must be among {list(moo.ARMS)} and include --candidate {candidate!r}, got {chosen}"
        )
    result = moo.run(
        [parse(c) for c in cases.split(",")], seeds, initial, evaluations, show, chosen, candidate, first_seed
    )
    result["command"] = (
        f"alloop bench moo --cases {cases} --seeds {seeds} --initial {initial} --evaluations {evaluations}"
        f" --arms {arms} --candidate {candidate}"
        + (f" --first-seed {first_seed}" if first_seed else "")
        + (" --json" if as_json else "")
    )
    typer.echo(json.dumps(result, indent=1) if as_json else json.dumps(result))


def transfer_command(
    data: Annotated[Path, typer.Option("--data", help="Folder of the plates.")] = Path("../shared/data"),
    target: Annotated[str, typer.Option("--target", help="The new campaign's plate.")] = "oer_plate_3860",
    source: Annotated[str, typer.Option("--source", help="The past campaign's plate.")] = "oer_plate_3496",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Campaigns per arm (seeds 0..n-1).")] = 10,
    source_size: Annotated[int, typer.Option("--source-size", min=4, help="Source results used.")] = 100,
    budget: Annotated[int, typer.Option("--budget", min=3, help="Experiments per campaign at most.")] = 150,
    arms: Annotated[
        str, typer.Option("--arms", help='Comma-separated arms ("": the source ranking alone).')
    ] = "cold,transfer,unrelated",
    first_seed: Annotated[
        int, typer.Option("--first-seed", min=0, help="Seeds first..first+seeds-1 (0: the protocol's).")
    ] = 0,
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

    try:
        result = transfer.run(
            paths[0],
            paths[1],
            seeds=seeds,
            source_size=source_size,
            budget=budget,
            on_run=show,
            arms=tuple(a.strip() for a in arms.split(",") if a.strip()),
            first_seed=first_seed,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--arms") from None
    result["command"] = (
        f"alloop bench transfer --target {target} --source {source} --seeds {seeds} "
        f"--source-size {source_size} --budget {budget} --arms {shlex.quote(arms)}"
        + (f" --first-seed {first_seed}" if first_seed else "")
        + (" --json" if as_json else "")
    )
    typer.echo(json.dumps(result, indent=1) if as_json else json.dumps(result))


def transfer_hartmann_command(
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Campaigns per arm.")] = 10,
    arms: Annotated[str, typer.Option("--arms", help="Comma-separated arms.")] = (
        "cold,shifted_1,shifted_5,shifted_10,inverted_10"
    ),
    first_seed: Annotated[
        int, typer.Option("--first-seed", min=0, help="Seeds first..first+seeds-1 (0: the protocol's).")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """BayBE's shifted-Hartmann transfer benchmark: a source at 1-10% of the grid against a cold start."""
    from loop.bench import transfer_hartmann

    def show(arm: str, seed: int, result: dict[str, Any]) -> None:
        Console(stderr=True).print(f"{arm} seed {seed}: {result}", highlight=False)

    try:
        result = transfer_hartmann.run(seeds, arms=tuple(arms.split(",")), on_run=show, first_seed=first_seed)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--arms") from None
    result["command"] = (
        f"alloop bench transfer-hartmann --seeds {seeds} --arms {arms}"
        + (f" --first-seed {first_seed}" if first_seed else "")
        + (" --json" if as_json else "")
    )
    typer.echo(json.dumps(result, indent=1) if as_json else json.dumps(result))
