"""Read-only views of a ledger: status summaries and tables for export."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from loop.calibration import calibration_report
from loop.database import masked
from loop.discovery import OBJECTIVE, DiscoveryReport, ledger_discovery
from loop.fidelity import target_fidelity
from loop.labreport import constraint_columns, lab_status, meets_constraints, outcome_constraints
from loop.ledger import EvaluationRecord, Ledger


def _signed_weights(config: dict[str, Any]) -> dict[str, float]:
    return {
        o["name"]: (1.0 if o.get("direction", "maximize") == "maximize" else -1.0)
        * float(o.get("weight") or 1.0)
        for o in config["objectives"]
    }


def describe_best(best: dict[str, Any], units: dict[str, str] | None = None) -> str:
    """The best evaluation in one short line: its objective values in their own sign and
    units, then the candidate: ``y = 0.3979 (x1 = 3.142, x2 = 2.275; candidate 1f2e3d4c5b, cycle 4)``.

    Parameters too long for a line (a structure) are left out; a formula is kept.
    """
    units = units or {}
    values = ", ".join(
        f"{name} = {best['values'][name]:.4g}{' ' + units[name] if units.get(name) else ''}"
        for name in best["objectives"]
    )
    short = [
        f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
        for k, v in best["params"].items()
        if isinstance(v, int | float | str) and len(str(v)) <= 40
    ]
    where = f"candidate {best['candidate_id'][:10]}, cycle {best['cycle']}"
    return f"{values} ({'; '.join([', '.join(short), where]) if short else where})"


def best_value(best: dict[str, Any] | None) -> float | None:
    """The best objective value in its own sign (the scalarised score when there are several)."""
    if best is None:
        return None
    objectives = best["objectives"]
    return float(best["values"][objectives[0]]) if len(objectives) == 1 else float(best["objective"])


def campaign_status(ledger: Ledger, name: str | None = None) -> dict[str, Any]:
    """Campaign, cycles, evaluations by status and best so far, as JSON-ready data."""
    row = ledger.campaign(name)
    weights = _signed_weights(row["config"])
    target = target_fidelity(row["config"])
    done = [
        e
        for e in ledger.evaluations(row["id"], ["done"])
        if all(p in e.values for p in weights) and e.fidelity == target
    ]
    lab = lab_status(ledger, row, done)
    constraints = outcome_constraints(row["config"])
    feasible = [e for e in done if meets_constraints(e, constraints)]
    best = None
    if feasible:

        def score(e: EvaluationRecord) -> float:
            return sum(w * e.values[p] for p, w in weights.items())

        top = max(feasible, key=score)
        best = {
            "candidate_id": top.candidate_id,
            "params": dict(top.params),
            "values": dict(top.values),
            "objective": score(top),
            "objectives": list(weights),
            "cycle": top.cycle,
        }
    cycles = ledger.cycles(row["id"])
    experiments, cost = ledger.spent(row["id"])
    return {
        "campaign": row["name"],
        "ledger": masked(ledger.url),
        "seed": row["seed"],
        "config_hash": row["config_hash"],
        "cycles": len(cycles),
        "open_cycles": sum(c.status == "open" for c in cycles),
        "evaluations": ledger.status_counts(row["id"]),
        "experiments": experiments,
        "cost": cost,
        "objectives": {p: ("maximize" if w > 0 else "minimize") for p, w in weights.items()},
        "best": best,
        "units": {o["name"]: o.get("unit", "") for o in row["config"]["objectives"]},
        "stop_reason": row["stop_reason"],
        "stopped_at": row["stopped_at"],
        "discovery": None if (found := campaign_discovery(ledger, row)) is None else found.as_dict(),
        **lab,
        **fidelity_status(ledger, row),
    }


def fidelity_status(ledger: Ledger, row: Mapping[str, Any]) -> dict[str, Any]:
    """A multi-fidelity campaign's ``fidelities``: per fidelity its cost per evaluation,
    experiments and spend so far, and which one is the ``target`` (nothing for one oracle)."""
    entries = row["config"].get("oracles")
    if not entries:
        return {}
    spent = ledger.spent_by_fidelity(row["id"])
    return {
        "target_fidelity": target_fidelity(row["config"]),
        "fidelities": {
            e["fidelity"]: {
                "cost_per_evaluation": e["cost"],
                "experiments": spent.get(e["fidelity"], (0, 0.0))[0],
                "cost": spent.get(e["fidelity"], (0, 0.0))[1],
            }
            for e in entries
        },
    }


def campaign_discovery(ledger: Ledger, row: Mapping[str, Any]) -> DiscoveryReport | None:
    """Per-round discovery metrics (:mod:`loop.discovery`) of a structure campaign (a generated
    pool, formation energy measured) against the hull of what it evaluated, a hit being within
    the hull acquisition's ``within_mev`` (default 1 meV/atom); ``None`` for other campaigns."""
    config = row["config"]
    names = [o["name"] for o in config["objectives"]]
    if not (config.get("space") or {}).get("generator") or OBJECTIVE not in names:
        return None
    within = (config.get("acquisition") or {}).get("within_mev") or 1.0
    return ledger_discovery(ledger, row["name"], float(within))


def campaign_calibration(ledger: Ledger, name: str | None = None) -> dict[str, Any]:
    """The campaign's prequential calibration (:func:`loop.calibration.calibration_report`)
    and the leave-one-out check of its last fitted surrogate (``loo``, ``None`` if none)."""
    row = ledger.campaign(name)
    config = row["config"]
    objectives = [o["name"] for o in config["objectives"]]
    surrogate = config.get("surrogate", {})
    method = surrogate.get("calibration", "none")
    scope = surrogate.get("calibration_applies_to", "all")
    report = calibration_report(ledger.predictions(row["id"]), objectives, method, scope=scope)
    fitted = [c.surrogate for c in ledger.cycles(row["id"]) if c.surrogate]
    report["loo"] = fitted[-1].get("loo") if fitted else None
    return report


def evaluations_table(ledger: Ledger, name: str | None = None) -> pd.DataFrame:
    """One row per evaluation: ids, cycle, status, parameters, values with uncertainties, cost, error."""
    row = ledger.campaign(name)
    records = []
    for e in ledger.evaluations(row["id"]):
        record: dict[str, Any] = {
            "evaluation_id": e.id,
            "cycle": e.cycle,
            "candidate_id": e.candidate_id,
            **({"fidelity": e.fidelity} if row["config"].get("oracles") else {}),
            "status": e.status,
        }
        record |= dict(e.params)
        for prop, value in e.values.items():
            record[prop] = value
            record[f"{prop}_uncertainty"] = e.uncertainties.get(prop)
        record["cost"] = e.cost
        record["error"] = e.error
        records.append(record)
    return constraint_columns(ledger, row, pd.DataFrame.from_records(records))
