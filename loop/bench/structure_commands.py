"""``alloop bench`` commands of structure discovery: discovery, pre-relaxation, multi-fidelity."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loop.bench.display import fmt


def discovery_command(
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Where the pool and its EMT ground truth are cached.")
    ] = Path("runs/bench-discovery"),
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per variant (0, 1, ...).")] = 5,
    first_seed: Annotated[
        int,
        typer.Option("--first-seed", min=0, help="The first seed (held-out checks: past the protocol's)."),
    ] = 0,
    budget: Annotated[int, typer.Option("--budget", min=2, help="EMT evaluations per campaign.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Candidates per round.")] = 50,
    max_atoms: Annotated[
        int, typer.Option("--max-atoms", min=1, help="Largest cell of the enumeration.")
    ] = 5,
    elements: Annotated[
        str, typer.Option("--elements", help="Comma-separated chemical system.")
    ] = "Cu,Ag,Au,Pd,Pt,Ni",
    prototypes: Annotated[bool, typer.Option(help="Substitute the built-in prototypes too.")] = True,
    variants: Annotated[
        str | None,
        typer.Option(
            "--variants", help="Comma-separated variants [default: random and the four GP variants]."
        ),
    ] = None,
    committee_probe: Annotated[
        int,
        typer.Option(
            "--committee-probe",
            min=0,
            help="Time one committee decision, scoring this many candidates (0: not).",
        ),
    ] = 0,
    committee_refit: Annotated[
        int,
        typer.Option(
            "--committee-refit",
            min=0,
            help="With --committee-probe: time the next round too, this many frames later (0: not).",
        ),
    ] = 0,
    decision_sizes: Annotated[
        str, typer.Option("--decision-sizes", help="Pool sizes of the seconds-per-decision timing.")
    ] = "10000,100000",
    decision_variant: Annotated[
        str, typer.Option("--decision-variant", help="The GP variant whose decisions are timed.")
    ] = "gp_pair_thompson",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Structure discovery against an exhaustive EMT ground truth: evaluations to 95%/100% hull recall."""
    from loop.bench.discovery import VARIANTS, DiscoveryProtocol, run_benchmark
    from loop.structures import StructureSpaceOptions

    chosen = tuple(variants.split(",")) if variants else DiscoveryProtocol().variants
    unknown = [v for v in (*chosen, decision_variant) if v not in VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    pool = StructureSpaceOptions(
        elements=elements.split(","),
        lattice=["fcc", "bcc", "hcp"],
        max_atoms=max_atoms,
        prototypes=["built-in"] if prototypes else [],
    )
    protocol = DiscoveryProtocol(
        pool,
        tuple(range(first_seed, first_seed + seeds)),
        budget,
        batch_size,
        min(batch_size, budget),
        variants=chosen,
    )
    sizes = [int(s) for s in decision_sizes.split(",") if s]
    result = run_benchmark(
        protocol,
        workdir,
        sizes,
        committee_probe=committee_probe,
        committee_refit=committee_refit,
        progress=lambda line: print(line, file=sys.stderr),
        decision_variant=decision_variant,
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        Console().print_json(json.dumps({k: result[k] for k in result if k != "runs"}))


def prerelax_command(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the DFT jobs run.")] = Path(
        "runs/bench-prerelax"
    ),
    calculator: Annotated[str, typer.Option("--calculator", help="The 'DFT': emt or gpaw.")] = "emt",
    model: Annotated[
        str, typer.Option("--model", help="The universal potential that pre-relaxes.")
    ] = "chgnet",
    elements: Annotated[
        str, typer.Option("--elements", help="Comma-separated elements of the alloy.")
    ] = "Cu,Au",
    max_atoms: Annotated[int, typer.Option("--max-atoms", min=1, max=12, help="Largest fcc cell.")] = 4,
    candidates: Annotated[int, typer.Option("--candidates", min=1, help="Orderings relaxed twice.")] = 30,
    rattle_a: Annotated[float, typer.Option("--rattle", min=0, help="Position rattle (Å, std).")] = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Draw of candidates and rattles.")] = 0,
    fmax: Annotated[float, typer.Option("--fmax", min=0.001, help="DFT force criterion (eV/Å).")] = 0.05,
    prerelax_fmax: Annotated[float, typer.Option("--prerelax-fmax", min=0.001, help="eV/Å.")] = 0.1,
    ecut_ev: Annotated[float, typer.Option("--ecut", min=50, help="GPAW plane-wave cut-off (eV).")] = 300.0,
    kpoint_density: Annotated[float, typer.Option("--kpoint-density", min=0.5, help="GPAW k/Å⁻¹.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """DFT ionic steps and wall time per relaxation, with and without universal-potential pre-relaxation."""
    from loop.bench import prerelax
    from oracles.dft_job import JobSettings
    from oracles.prerelax import PreRelaxation
    from surrogates.universal import universal_calculator

    chosen = prerelax.pick_candidates(elements.split(","), max_atoms, candidates, rattle_a, seed)
    settings = JobSettings(prerelax.calculator_spec(calculator, ecut_ev, kpoint_density), fmax_ev_per_a=fmax)
    potential = PreRelaxation(universal_calculator(model), model, fmax_ev_per_a=prerelax_fmax)

    def show(row: dict[str, Any]) -> None:
        Console(stderr=True).print(row, highlight=False)

    start = time.perf_counter()
    result = prerelax.run(chosen, settings, potential, workdir, on_candidate=show)
    result["wall_s"] = time.perf_counter() - start
    result["command"] = " ".join(["alloop bench prerelax", *sys.argv[3:]])
    typer.echo(json.dumps(result, indent=1) if as_json else json.dumps(result["summary"]))


def multifidelity_command(
    seeds: Annotated[
        int | None,
        typer.Option("--seeds", min=1, help="Seeds per problem and method [default: 10; structures 5]."),
    ] = None,
    problems: Annotated[
        str, typer.Option(help="Comma-separated: branin, hartmann, structures.")
    ] = "branin,hartmann",
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated [default: single,mf_ucb,funnel (mf_mes too); "
            "structures: single,funnel,mf_hull]."
        ),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option("--budget", min=1.0, help="Total cost per run [default: 20; structures 1000]."),
    ] = None,
    workdir: Annotated[
        Path,
        typer.Option("--workdir", help="structures: where the discovery pool and its caches are."),
    ] = Path("runs/bench-discovery"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")] = False,
) -> None:
    """Total cost to reach a target, cost-aware multi-fidelity against single-fidelity and the
    fixed funnel at equal total cost: BoTorch's AugmentedBranin and AugmentedHartmann (regret
    target), and the discovery benchmark's structures at CHGNet and EMT (95% hull recall)
    (benchmarks/RESULTS.md, "Multi-fidelity")."""
    import dataclasses

    from loop.bench import multifidelity_structures as structures
    from loop.bench.multifidelity import METHODS, PROBLEMS, Run, Settings, run_benchmark

    chosen_problems = problems.split(",")
    analytic = [p for p in chosen_problems if p != "structures"]
    on_structures = "structures" in chosen_problems
    unknown = [p for p in analytic if p not in PROBLEMS]
    if unknown:
        known_problems = [*PROBLEMS, "structures"]
        raise typer.BadParameter(f"unknown {unknown}; known: {known_problems}", param_hint="--problems")
    analytic_methods = (methods or "single,mf_ucb,funnel").split(",")
    structure_methods = (methods or "single,funnel,mf_hull").split(",")
    for name, chosen, known in (
        ("branin, hartmann", analytic_methods if analytic else [], METHODS),
        ("structures", structure_methods if on_structures else [], structures.METHODS),
    ):
        wrong = [m for m in chosen if m not in known]
        if wrong:
            raise typer.BadParameter(
                f"unknown {wrong} for {name}; known: {list(known)}", param_hint="--methods"
            )

    def progress(problem: str, method: str, seed: int, run: Run) -> None:
        if not quiet:
            print(f"{problem} {method} seed {seed}: {json.dumps(run.as_dict())}", file=sys.stderr)

    result: dict[str, Any] = {"problems": {}}
    if analytic:
        settings = Settings() if budget is None else Settings(budget=budget)
        result = run_benchmark(analytic, analytic_methods, range(seeds or 10), settings, progress)
    if on_structures:
        protocol = structures.StructureProtocol()
        if budget is not None:
            protocol = dataclasses.replace(
                protocol, discovery=dataclasses.replace(protocol.discovery, budget=int(budget))
            )
        start = time.perf_counter()
        result["problems"]["structures"] = structures.run_benchmark(
            structure_methods,
            range(seeds or 5),
            workdir,
            protocol,
            lambda method, seed, run: progress("structures", method, seed, run),
        )
        result["problems"]["structures"]["wall_s"] = time.perf_counter() - start
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for problem, numbers in result["problems"].items():
        table = Table(title=f"{problem}: cost to the target")
        for column in ("method", "reached", "median cost", "median target evaluations"):
            table.add_column(column)
        for method, row in numbers["methods"].items():
            table.add_row(
                method,
                f"{row['reached']}/{len(row['runs'])}",
                fmt(row["median_cost_to_target"]),
                fmt(row["median_target_evaluations"]),
            )
        Console().print(table)
        typer.echo(json.dumps(numbers["decision"]))
