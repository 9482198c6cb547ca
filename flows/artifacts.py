"""What a campaign shows in the Prefect UI: the proposed batch, the budget spent (in all, and
per fidelity and cycle), a report (with the Pareto front and hypervolume per cycle of a Pareto
search, and the surrogate's prequential calibration and its reliability diagram).

Artifact keys are stable per campaign (``<campaign>-batch``, ``<campaign>-progress``,
``<campaign>-spend``, ``<campaign>-report``), so the UI keeps one history per campaign across
flow runs. Every number comes from the ledger.
"""

from __future__ import annotations

import base64
import io
import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import torch
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from loop.calibration import LEVELS, plot_reliability
from loop.campaign import Campaign, CampaignReport
from loop.labreport import lab_status, pareto_title
from loop.ledger import EvaluationRecord, Ledger
from loop.pareto import plot_pareto
from loop.report import campaign_calibration, campaign_discovery, describe_best
from loop.schema import DEFAULT_FIDELITY


def artifact_key(campaign: str, kind: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for a campaign's ``kind``."""
    slug = re.sub(r"[^a-z0-9]+", "-", campaign.lower()).strip("-") or "campaign"
    return f"{slug}-{kind}"


def _number(value: Any) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def batch_rows(campaign: Campaign, cycle: int, batch: Sequence[EvaluationRecord]) -> list[dict[str, Any]]:
    """One row per evaluation of the batch: candidate (with its fidelity and cost in a
    multi-fidelity campaign), parameters, predicted mean and std, acquisition value."""
    chosen = next((c.chosen for c in campaign.ledger.cycles(campaign.id) if c.cycle == cycle), None) or []
    why = {(c["candidate_id"], c.get("fidelity", DEFAULT_FIDELITY)): c for c in chosen}
    rows = []
    for evaluation in batch:
        explained = why.get((evaluation.candidate_id, evaluation.fidelity), {})
        row: dict[str, Any] = {"cycle": cycle, "candidate": evaluation.candidate_id}
        if campaign.config.oracles is not None:
            row |= {"fidelity": evaluation.fidelity, "cost": _number(evaluation.cost)}
        row.update({k: v if isinstance(v, str) else _number(v) for k, v in evaluation.params.items()})
        for i, name in enumerate(campaign.objectives):
            mean, std = explained.get("mean"), explained.get("std")
            row[f"{name} mean"] = None if mean is None else _number(mean[i])
            row[f"{name} std"] = None if std is None else _number(std[i])
        row["acquisition value"] = _number(explained.get("acquisition_value"))
        rows.append(row)
    return rows


def publish_batch(campaign: Campaign, cycle: int, batch: Sequence[EvaluationRecord]) -> UUID:
    """A table artifact of the batch about to be evaluated."""
    # prefect's async_dispatch types the result as R | Coroutine; called from sync code it is R
    return cast(
        UUID,
        create_table_artifact(
            batch_rows(campaign, cycle, batch),
            key=artifact_key(campaign.name, "batch"),
            description=f"Campaign {campaign.name}, cycle {cycle}: the proposed batch "
            "(posterior mean and std of each objective, acquisition value; empty before the first fit).",
        ),
    )


def budget_fraction(campaign: Campaign) -> float:
    """How much of the budget is spent, in percent (the tighter of experiments and cost)."""
    stopping = campaign.config.stopping
    experiments, cost = campaign.ledger.spent(campaign.id)
    fractions = []
    if stopping.max_experiments is not None:
        fractions.append(experiments / stopping.max_experiments)
    if stopping.max_cost is not None:
        fractions.append(cost / stopping.max_cost)
    return round(100.0 * min(max(fractions, default=0.0), 1.0), 2)


class BudgetProgress:
    """A progress artifact of the budget spent, created once per flow run and updated per cycle."""

    def __init__(self, campaign: Campaign) -> None:
        self.campaign = campaign
        # prefect's async_dispatch types the result as R | Coroutine; called from sync code it is R
        self.id = cast(
            UUID,
            create_progress_artifact(
                budget_fraction(campaign),
                key=artifact_key(campaign.name, "progress"),
                description=self._description(),
            ),
        )

    def _description(self) -> str:
        experiments, cost = self.campaign.ledger.spent(self.campaign.id)
        return f"Campaign {self.campaign.name}: budget spent ({experiments} experiments, cost {cost:g})."

    def update(self) -> None:
        update_progress_artifact(self.id, budget_fraction(self.campaign), description=self._description())


def spend_rows(campaign: Campaign) -> list[dict[str, Any]]:
    """One row per cycle and fidelity: experiments committed to and their cost (as the budget
    counts them, :meth:`~loop.ledger.Ledger.spent`), and the fidelity's cost so far."""
    rows: list[dict[str, Any]] = []
    so_far: dict[str, float] = {}
    for (cycle, fidelity), (experiments, cost) in campaign.ledger.spent_by_cycle(campaign.id).items():
        so_far[fidelity] = round(so_far.get(fidelity, 0.0) + cost, 12)
        rows.append(
            {
                "cycle": cycle,
                "fidelity": fidelity,
                "experiments": experiments,
                "cost": cost,
                "fidelity cost so far": so_far[fidelity],
            }
        )
    return rows


def publish_spend(campaign: Campaign) -> UUID:
    """A table artifact of the spend per cycle and fidelity, every cycle so far."""
    experiments, cost = campaign.ledger.spent(campaign.id)
    # prefect's async_dispatch types the result as R | Coroutine; called from sync code it is R
    return cast(
        UUID,
        create_table_artifact(
            spend_rows(campaign),
            key=artifact_key(campaign.name, "spend"),
            description=f"Campaign {campaign.name}: spend per cycle and fidelity "
            f"({experiments} experiments, cost {cost:g} in all; pending evaluations included).",
        ),
    )


def best_so_far(campaign: Campaign) -> list[tuple[int, int, float]]:
    """``(experiment number, cycle, best objective so far)`` over the done evaluations, in order."""
    done = [
        e
        for e in campaign.ledger.evaluations(campaign.id, ["done"])
        if all(p in e.values for p in campaign.objectives)
    ]
    if not done:
        return []
    Y = torch.tensor([[e.values[p] for p in campaign.objectives] for e in done], dtype=torch.double)
    scores = campaign.acquisition.scalarize(Y).tolist()
    trace, best = [], -math.inf
    for n, (evaluation, score) in enumerate(zip(done, scores, strict=True), start=1):
        best = max(best, score)
        trace.append((n, evaluation.cycle, best))
    return trace


def plot_best_so_far(trace: Sequence[tuple[int, int, float]], title: str) -> bytes:
    """A PNG of the best objective so far against the number of experiments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3), dpi=80)
    axes.step([t[0] for t in trace], [t[2] for t in trace], where="post")
    axes.set_xlabel("experiments done")
    axes.set_ylabel("best objective so far")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def report_markdown(campaign: Campaign, report: CampaignReport, plot: str | None) -> str:
    """The end-of-run report: best so far, a per-cycle summary, the best-so-far plot."""
    lines = [f"# Campaign {campaign.name}", ""]
    lines.append(
        f"This run: {report.cycles_run} cycle(s); "
        f"stopped: {report.stop_reason or 'cycle limit of this run'}. "
        f"Spent so far: {report.experiments} experiments, cost {report.cost:g}."
    )
    lines.append("")
    best = report.best
    if best is None:
        lines.append("**Best so far:** nothing measured yet.")
    else:
        units = {o.name: o.unit for o in campaign.config.objectives}
        lines.append(f"**Best so far:** {describe_best(best, units)}.")
    lines += [
        "",
        "| cycle | evaluations | done | failed | best in cycle | best so far |",
        "|---|---|---|---|---|---|",
    ]
    trace = best_so_far(campaign)
    best_by_cycle: dict[int, float] = {}
    for _, cycle, value in trace:
        best_by_cycle[cycle] = value
    evaluations = campaign.ledger.evaluations(campaign.id)
    running = -math.inf
    for cycle in sorted({e.cycle for e in evaluations}):
        of_cycle = [e for e in evaluations if e.cycle == cycle]
        done = sum(e.status == "done" for e in of_cycle)
        failed = sum(e.status == "failed" for e in of_cycle)
        in_cycle = best_by_cycle.get(cycle)
        running = max(running, in_cycle) if in_cycle is not None else running
        lines.append(
            f"| {cycle} | {len(of_cycle)} | {done} | {failed} | "
            f"{'—' if in_cycle is None else f'{in_cycle:.4g}'} | "
            f"{'—' if running == -math.inf else f'{running:.4g}'} |"
        )
    if plot:
        lines += ["", plot]
    return "\n".join(
        lines
        + pareto_markdown(campaign)
        + calibration_markdown(campaign)
        + discovery_markdown(campaign.ledger, campaign.name)
    )


def pareto_markdown(campaign: Campaign) -> list[str]:
    """A Pareto search's section: the front and the hypervolume per cycle (the data of
    ``alloop status``, feasible results only), and the two-panel plot inline."""
    # Only the Pareto part of ``alloop status`` (its calibration and discovery parts read the ledger again).
    row = campaign.ledger.campaign(campaign.name)
    pareto = lab_status(campaign.ledger, row, campaign.ledger.evaluations(row["id"], ["done"])).get("pareto")
    if not pareto:
        return []
    names = pareto["objectives"]
    lines = [
        "",
        f"## {pareto_title(pareto)}",
        "",
        "| candidate | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for point in pareto["front"]:
        lines.append(
            f"| {point['candidate_id'][:10]} | " + " | ".join(f"{point[n]:.4g}" for n in names) + " |"
        )
    lines += ["", "| cycle | hypervolume |", "|---|---|"]
    lines += [f"| {h['cycle']} | {h['hypervolume']:.4g} |" for h in pareto["hypervolume_by_cycle"]]
    with tempfile.TemporaryDirectory() as folder:
        png = plot_pareto(pareto, Path(folder) / "pareto.png").read_bytes()
    return [*lines, "", f"![Pareto front and hypervolume per cycle](data:image/png;base64,{_b64(png)})"]


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def discovery_markdown(ledger: Ledger, name: str) -> list[str]:
    """A structure campaign's discovery per round (:func:`loop.report.campaign_discovery`):
    evaluated, hits, hit rate, coverage of the predicted interval; nothing for other campaigns."""
    report = campaign_discovery(ledger, ledger.campaign(name))
    if report is None:
        return []
    lines = [
        "",
        f"## Discovery (hits: within {report.within_mev:g} meV/atom of the hull of what was evaluated)",
        "",
        f"| cycle | evaluated | hits | hit rate | cumulative hit rate | {report.level:.0%} coverage |",
        "|---|---|---|---|---|---|",
    ]
    for c in report.cycles:
        lines.append(
            f"| {c.cycle} | {c.evaluated} | {c.hits} | {_short(c.hit_rate)} | "
            f"{_short(c.cumulative_hit_rate)} | {_short(c.coverage)} |"
        )
    return lines


def calibration_markdown(campaign: Campaign) -> list[str]:
    """The calibration section: coverage of the central intervals per objective and std, which
    std the decisions used, and the reliability diagram inline."""
    report = campaign_calibration(campaign.ledger, campaign.name)
    levels = " | ".join(f"{level:.0%}" for level in LEVELS)
    lines = [
        "",
        "## Calibration (prequential: each result against the prediction that chose it)",
        "",
        f"The stopping rules use the {report['std_used']['stopping']}; "
        f"the acquisition uses the {report['std_used']['acquisition']}.",
        "",
        f"| objective | std | results | {levels} | mean z | RMS z |",
        "|---|---|---|" + "---|" * len(LEVELS) + "---|---|",
    ]
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, numbers in report["objectives"].items():
        for std in ("latent", "predictive", "recalibrated"):
            s = numbers[std]
            covered = " | ".join(_short(s["coverage"][f"{level:g}"]) for level in LEVELS)
            z = f"{_short(s['mean_z'])} | {_short(s['rms_z'])}"
            lines.append(f"| {name} | {std} | {s['count']} | {covered} | {z} |")
        curves |= {f"{name} {std}": points for std, points in numbers["reliability"].items()}
    if any(curves.values()):
        buffer = io.BytesIO()
        plot_reliability(buffer, curves, f"{campaign.name}: reliability")
        lines += ["", f"![reliability diagram](data:image/png;base64,{_b64(buffer.getvalue())})"]
    return lines


def _short(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def publish_report(campaign: Campaign, report: CampaignReport) -> UUID:
    """The end-of-run markdown artifact, with the best-so-far plot inline (and as a PNG file
    next to a file ledger, linked)."""
    trace = best_so_far(campaign)
    plot = None
    if trace:
        png = plot_best_so_far(trace, campaign.name)
        plot = f"![best so far](data:image/png;base64,{_b64(png)})"
        if campaign.ledger.url.startswith("sqlite:///"):
            path = Path(campaign.ledger.url.removeprefix("sqlite:///")).with_name(
                f"{artifact_key(campaign.name, 'best-so-far')}.png"
            )
            try:
                path.write_bytes(png)
                plot += f"\n\n[best-so-far plot]({path.as_uri()})"
            except OSError:
                pass
    # prefect's async_dispatch types the result as R | Coroutine; called from sync code it is R
    return cast(
        UUID,
        create_markdown_artifact(
            report_markdown(campaign, report, plot),
            key=artifact_key(campaign.name, "report"),
            description=f"Campaign {campaign.name}: report at the end of a flow run.",
        ),
    )
