"""Reading a ledger: its campaigns, cycles, evaluations with their results, the calibration
record, and what has been spent.

Reads only, each in one connection; the writes (an evaluation's state machine) are
:class:`~loop.ledger.Ledger`'s own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from loop.calibration import CalibrationPoint, Prediction
from loop.database import masked
from loop.errors import LedgerError
from loop.frame import Frame
from loop.ledger_connection import LedgerConnection, reconnecting
from loop.ledger_records import STATUSES, CycleRecord, EvaluationRecord, Status
from loop.schema import campaigns, candidates, cycles, evaluations, predictions, results


class LedgerQueries(LedgerConnection):
    """The reads of :class:`~loop.ledger.Ledger`."""

    @reconnecting
    def campaign_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(campaigns.c.name).order_by(campaigns.c.id)).scalars())

    @reconnecting
    def campaign(self, name: str | None = None) -> Mapping[str, Any]:
        """The campaign row named ``name`` (or the only one).

        Raises:
            LedgerError: no such campaign, or several and no name given.
        """
        names = self.campaign_names()
        if name is None:
            if len(names) != 1:
                raise LedgerError(
                    f"{masked(self.url)} holds {len(names)} campaigns {names}; name the one you mean"
                )
            name = names[0]
        with self.engine.connect() as conn:
            row = conn.execute(select(campaigns).where(campaigns.c.name == name)).first()
        if row is None:
            raise LedgerError(f"no campaign named {name!r} in {masked(self.url)}; it holds {names}")
        return dict(row._mapping)

    @reconnecting
    def cycles(self, campaign_id: int) -> list[CycleRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(cycles).where(cycles.c.campaign_id == campaign_id).order_by(cycles.c.cycle)
            ).all()
        return [
            CycleRecord(r.cycle, r.status, r.acquisition, r.surrogate, r.chosen, r.stop_reason) for r in rows
        ]

    @reconnecting
    def evaluations(
        self, campaign_id: int, statuses: Sequence[Status] | None = None
    ) -> list[EvaluationRecord]:
        """The campaign's evaluations (optionally only some statuses), in proposal order."""
        query = (
            select(evaluations, candidates.c.params)
            .join(
                candidates,
                (candidates.c.campaign_id == evaluations.c.campaign_id)
                & (candidates.c.id == evaluations.c.candidate_id),
            )
            .where(evaluations.c.campaign_id == campaign_id)
            .order_by(evaluations.c.id)
        )
        if statuses is not None:
            query = query.where(evaluations.c.status.in_(list(statuses)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            ids = [r.id for r in rows if r.status == "done"]
            values: dict[int, dict[str, float]] = {}
            uncertainties: dict[int, dict[str, float | None]] = {}
            if ids:
                for r in conn.execute(select(results).where(results.c.evaluation_id.in_(ids))):
                    values.setdefault(r.evaluation_id, {})[r.property] = r.value
                    uncertainties.setdefault(r.evaluation_id, {})[r.property] = r.uncertainty
        return [
            EvaluationRecord(
                id=r.id,
                candidate_id=r.candidate_id,
                params=r.params,
                cycle=r.cycle,
                status=r.status,
                external_id=r.external_id,
                cost=r.cost,
                error=r.error,
                retryable=r.retryable,
                values=values.get(r.id, {}),
                uncertainties=uncertainties.get(r.id, {}),
                metadata=r.metadata or {},
                frame=None if r.frame is None else Frame.from_dict(r.frame),
                fidelity=r.fidelity,
            )
            for r in rows
        ]

    @reconnecting
    def predictions(self, campaign_id: int) -> list[CalibrationPoint]:
        """The campaign's calibration record: every recorded prediction with its measured
        value (``None`` while not measured), in proposal order."""
        query = (
            select(predictions, evaluations.c.cycle, results.c.value)
            .join(evaluations, evaluations.c.id == predictions.c.evaluation_id)
            .outerjoin(
                results,
                (results.c.evaluation_id == predictions.c.evaluation_id)
                & (results.c.property == predictions.c.property),
            )
            .where(evaluations.c.campaign_id == campaign_id)
            .order_by(predictions.c.evaluation_id, predictions.c.property)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            CalibrationPoint(
                r.evaluation_id,
                r.cycle,
                r.property,
                Prediction(r.mean, r.latent_std, r.predictive_std, r.std_scale),
                r.value,
            )
            for r in rows
        ]

    @reconnecting
    def status_counts(self, campaign_id: int) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(evaluations.c.status, func.count())
                .where(evaluations.c.campaign_id == campaign_id)
                .group_by(evaluations.c.status)
            ).all()
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts

    def spent(self, campaign_id: int) -> tuple[int, float]:
        """Experiments committed to (pending, done, or failed after reaching the oracle) and
        their cost so far."""
        by_fidelity = self.spent_by_fidelity(campaign_id).values()
        return sum(n for n, _ in by_fidelity), round(sum(cost for _, cost in by_fidelity), 12)

    def spent_by_fidelity(self, campaign_id: int) -> dict[str, tuple[int, float]]:
        """:meth:`spent` per fidelity (only those with evaluations), by fidelity name."""
        totals: dict[str, tuple[int, float]] = {}
        for (_, fidelity), (n, cost) in self.spent_by_cycle(campaign_id).items():
            known, so_far = totals.get(fidelity, (0, 0.0))
            totals[fidelity] = (known + n, round(so_far + cost, 12))
        return dict(sorted(totals.items()))

    @reconnecting
    def spent_by_cycle(self, campaign_id: int) -> dict[tuple[int, str], tuple[int, float]]:
        """:meth:`spent` per ``(cycle, fidelity)`` (only those with evaluations), in that order."""
        reached_oracle = evaluations.c.status.in_(["proposed", "submitted", "done"]) | (
            evaluations.c.submitted_at.is_not(None)
        )
        key = (evaluations.c.cycle, evaluations.c.fidelity)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*key, func.count(), func.coalesce(func.sum(evaluations.c.cost), 0.0))
                .where(evaluations.c.campaign_id == campaign_id, reached_oracle)
                .group_by(*key)
                .order_by(*key)
            ).all()
        return {(int(cycle), fidelity): (int(n), round(float(cost), 12)) for cycle, fidelity, n, cost in rows}
