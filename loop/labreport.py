"""Read-only views of lab-grade campaigns: the Pareto front and hypervolume per cycle, outcome
constraints per candidate (measured, and predicted when proposed), and wasted evaluations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from rich.table import Table

from loop.feasibility import is_wasted
from loop.labconfig import is_pareto
from loop.ledger import EvaluationRecord, Ledger
from loop.multiobjective import OutcomeConstraint
from loop.pareto import pareto_report


def outcome_constraints(config: Mapping[str, Any]) -> list[OutcomeConstraint]:
    """The stored configuration's outcome constraints, with their columns in the model."""
    names = [o["name"] for o in config["objectives"]]
    specs = (config.get("constraints") or {}).get("outcomes", [])
    outcomes = [*names, *dict.fromkeys(c["name"] for c in specs if c["name"] not in names)]
    return [
        OutcomeConstraint(c["name"], c["op"], float(c["value"]), outcomes.index(c["name"])) for c in specs
    ]


def meets_constraints(evaluation: EvaluationRecord, constraints: Sequence[OutcomeConstraint]) -> bool:
    return all(c.name in evaluation.values and c.met(evaluation.values[c.name]) for c in constraints)


def lab_status(ledger: Ledger, row: Mapping[str, Any], done: Sequence[EvaluationRecord]) -> dict[str, Any]:
    """Wasted evaluations, and the Pareto front of a Pareto search (feasible results only)."""
    config = row["config"]
    everything = ledger.evaluations(row["id"], ["failed"])
    status: dict[str, Any] = {"wasted_evaluations": sum(is_wasted(e) for e in everything)}
    constraints = outcome_constraints(config)
    if constraints:
        status["feasible_results"] = sum(meets_constraints(e, constraints) for e in done)
    if is_pareto(config["objectives"]):
        status["pareto"] = pareto_of(config, [e for e in done if meets_constraints(e, constraints)])
    return status


def pareto_of(config: Mapping[str, Any], done: Sequence[EvaluationRecord]) -> dict[str, Any] | None:
    """:func:`~loop.pareto.pareto_report` of the results ``done``; ``None`` if there are none."""
    if not done:
        return None
    names = [o["name"] for o in config["objectives"]]
    signs = torch.tensor(
        [1.0 if o.get("direction", "maximize") == "maximize" else -1.0 for o in config["objectives"]]
    )
    Y = torch.tensor([[e.values[n] for n in names] for e in done], dtype=torch.double)
    reference = (config.get("acquisition") or {}).get("reference_point")
    return pareto_report(
        [e.cycle for e in done], Y, signs.double(), names, [e.candidate_id for e in done], reference
    )


def constraint_columns(ledger: Ledger, row: Mapping[str, Any], table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (one row per evaluation, in ledger order) with, per outcome constraint
    ``name op value``, the measured verdict ``<name>_ok`` and the probability the surrogate
    gave it when the candidate was proposed, ``<name>_p_ok``."""
    constraints = outcome_constraints(row["config"])
    if not constraints or table.empty:
        return table
    predicted: dict[str, Mapping[str, Any]] = {}
    for cycle in ledger.cycles(row["id"]):
        for chosen in cycle.chosen or []:
            predicted[chosen["candidate_id"]] = chosen
    table = table.copy()
    for c in constraints:
        table[f"{c.name}_ok"] = [
            None if pd.isna(v) else c.met(float(v)) for v in table.get(c.name, [float("nan")] * len(table))
        ]
        probabilities = []
        for cid in table["candidate_id"]:
            chosen = predicted.get(cid) or {}
            mean, std = chosen.get("mean"), chosen.get("std")
            m = None if mean is None else mean[c.column]
            s = None if std is None else std[c.column]
            probabilities.append(None if m is None or s is None else c.probability(m, s))
        table[f"{c.name}_p_ok"] = probabilities
    return table


def pareto_title(pareto: Mapping[str, Any]) -> str:
    """``Pareto front: hypervolume H (reference r1, r2, inferred|given)``."""
    how = "inferred" if pareto["reference_point_inferred"] else "given"
    reference = ", ".join(f"{v:.4g}" for v in pareto["reference_point"])
    return f"Pareto front: hypervolume {pareto['hypervolume']:.4g} (reference {reference}, {how})"


def pareto_table(pareto: Mapping[str, Any]) -> Table:
    """The front, its hypervolume and the reference point, for the terminal."""
    names = pareto["objectives"]
    table = Table(title=pareto_title(pareto))
    for column in ["candidate", *names]:
        table.add_column(column)
    for point in pareto["front"]:
        table.add_row(point["candidate_id"][:10], *(f"{point[n]:.4g}" for n in names))
    per_cycle = ", ".join(f"{h['cycle']}: {h['hypervolume']:.3g}" for h in pareto["hypervolume_by_cycle"])
    table.caption = f"hypervolume per cycle: {per_cycle}"
    return table
