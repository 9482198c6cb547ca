"""The ledger: a campaign's single source of truth, in a real database.

SQLite by default (a file, WAL journal, one transaction per state change), or any
SQLAlchemy URL (PostgreSQL for concurrent writers). This module writes: an evaluation moves
``proposed → submitted → done | failed``, each step one transaction. Elsewhere: the tables,
their version and the migrations of older ledgers (:mod:`loop.schema`), opening the database
and reconnecting when a server goes away (:mod:`loop.ledger_connection`, :mod:`loop.database`),
the reads (:mod:`loop.ledger_queries`) and the records they return (:mod:`loop.ledger_records`).

A result is committed in the transaction that marks its evaluation done, the moment it
arrives. The unique (campaign, candidate, fidelity) key makes evaluating a candidate twice at
one fidelity impossible, whatever process asks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from loop.calibration import Prediction
from loop.database import masked
from loop.errors import CampaignError, DuplicateCandidateError, LedgerError
from loop.ledger_connection import ledger_url, reconnecting
from loop.ledger_queries import LedgerQueries
from loop.ledger_records import STATUSES, CycleRecord, EvaluationRecord, Proposal, Status
from loop.provenance import package_versions, process_info
from loop.schema import campaigns, candidates, cycles, evaluations, predictions, results, runs
from oracles.base import Result

__all__ = [
    "STATUSES",
    "CycleRecord",
    "EvaluationRecord",
    "Ledger",
    "Proposal",
    "Status",
    "ledger_url",
]

_ALLOWED_FROM: dict[Status, tuple[Status, ...]] = {
    "submitted": ("proposed",),
    "done": ("submitted",),
    "failed": ("proposed", "submitted"),
}


def _now() -> datetime:
    return datetime.now(UTC)


class Ledger(LedgerQueries):
    """Durable record of campaigns. ``Ledger(location, create=True, reconnect_s=60.0)`` opens a
    file path (SQLite) or an SQLAlchemy URL as :class:`~loop.ledger_connection.LedgerConnection`
    says (its arguments and errors); the reads are :class:`~loop.ledger_queries.LedgerQueries`';
    the writes, one transaction per state change, are here.
    """

    # --- campaigns and runs -----------------------------------------------------------------

    @reconnecting
    def open_campaign(self, name: str, config: Mapping[str, Any], config_hash: str, seed: int) -> int:
        """The id of campaign ``name``, created if new. A resume stores ``config`` as it runs
        now: what its hash leaves out (the stopping rules, a default recalibration) may have
        changed, and the reports read them from the ledger.

        Two processes may open a new campaign at once (two ``alloop run`` on one PostgreSQL
        ledger): the one whose insert loses to the other's reads the row the other made.

        Raises:
            CampaignError: the campaign exists with another configuration hash.
        """
        try:
            return self._open_campaign(name, config, config_hash, seed)
        except IntegrityError:  # created by another process since this one looked
            return self._open_campaign(name, config, config_hash, seed)

    def _open_campaign(self, name: str, config: Mapping[str, Any], config_hash: str, seed: int) -> int:
        with self.transaction() as conn:
            row = conn.execute(select(campaigns).where(campaigns.c.name == name)).first()
            if row is not None:
                if row.config_hash != config_hash:
                    raise CampaignError(
                        f"campaign {name!r} already exists in {masked(self.url)} with a different "
                        f"configuration (hash {row.config_hash}, now {config_hash}); only [stopping] "
                        "may change on resume — use another campaign name or ledger"
                    )
                if row.config != dict(config):
                    stored = update(campaigns).where(campaigns.c.id == row.id)
                    conn.execute(stored.values(config=dict(config)))
                return int(row.id)
            return _inserted_id(
                conn,
                insert(campaigns).values(
                    name=name,
                    config=dict(config),
                    config_hash=config_hash,
                    seed=seed,
                    versions=package_versions(),
                    created_at=_now(),
                ),
            )

    @reconnecting
    def start_run(self, campaign_id: int) -> int:
        """Register the current process as a run of the campaign; returns the run id."""
        with self.transaction() as conn:
            row = conn.execute(select(campaigns).where(campaigns.c.id == campaign_id)).one()
            return _inserted_id(
                conn,
                insert(runs).values(
                    campaign_id=campaign_id,
                    seed=row.seed,
                    config_hash=row.config_hash,
                    versions=package_versions(),
                    started_at=_now(),
                    **process_info(),
                ),
            )

    @reconnecting
    def set_stop_reason(self, campaign_id: int, reason: str | None) -> None:
        """Remember why the campaign stopped (``None``: it has not, or may go on again);
        writes only when the reason changed."""
        with self.transaction() as conn:
            conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id, campaigns.c.stop_reason.is_distinct_from(reason))
                .values(stop_reason=reason, stopped_at=None if reason is None else _now())
            )

    # --- cycles -----------------------------------------------------------------------------

    @reconnecting
    def open_cycle(self, campaign_id: int, run_id: int) -> int:
        """The campaign's open cycle (left by a previous run) or a new one."""
        with self.transaction() as conn:
            open_cycle = conn.execute(
                select(cycles.c.cycle).where(cycles.c.campaign_id == campaign_id, cycles.c.status == "open")
            ).scalar()
            if open_cycle is not None:
                return int(open_cycle)
            last = conn.execute(
                select(func.max(cycles.c.cycle)).where(cycles.c.campaign_id == campaign_id)
            ).scalar()
            cycle = 0 if last is None else int(last) + 1
            conn.execute(
                insert(cycles).values(
                    campaign_id=campaign_id, cycle=cycle, status="open", run_id=run_id, started_at=_now()
                )
            )
            return cycle

    @reconnecting
    def close_cycle(self, campaign_id: int, cycle: int, stop_reason: str | None = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                update(cycles)
                .where(cycles.c.campaign_id == campaign_id, cycles.c.cycle == cycle)
                .values(status="closed", finished_at=_now(), stop_reason=stop_reason)
            )

    # --- evaluations ------------------------------------------------------------------------

    @reconnecting
    def propose(
        self,
        campaign_id: int,
        run_id: int,
        cycle: int,
        proposals: Sequence[Proposal],
        acquisition: str,
        surrogate: Mapping[str, Any] | None,
    ) -> list[int]:
        """Record a cycle's chosen batch in one transaction; returns the evaluation ids.

        Raises:
            DuplicateCandidateError: a candidate of the batch already has an evaluation in
                this campaign, or the batch names one twice. Nothing is written then.
        """
        ids = [p.candidate.id for p in proposals]
        keys = [(p.candidate.id, p.fidelity) for p in proposals]
        if len(set(keys)) != len(keys):
            raise DuplicateCandidateError(f"batch names a candidate twice at one fidelity: {ids}")
        now = _now()
        try:
            with self.transaction() as conn:
                evaluation_ids = []
                for p in proposals:
                    known = conn.execute(
                        select(candidates.c.id).where(
                            candidates.c.campaign_id == campaign_id, candidates.c.id == p.candidate.id
                        )
                    ).first()
                    if known is None:
                        conn.execute(
                            insert(candidates).values(
                                campaign_id=campaign_id,
                                id=p.candidate.id,
                                params=dict(p.candidate.params),
                                run_id=run_id,
                                created_at=now,
                            )
                        )
                    evaluation_ids.append(
                        _inserted_id(
                            conn,
                            insert(evaluations).values(
                                campaign_id=campaign_id,
                                candidate_id=p.candidate.id,
                                fidelity=p.fidelity,
                                cost=p.cost,
                                cycle=cycle,
                                status="proposed",
                                run_id=run_id,
                                proposed_at=now,
                            ),
                        )
                    )
                    _write_predictions(conn, evaluation_ids[-1], p.predictions or {})
                conn.execute(
                    update(cycles)
                    .where(cycles.c.campaign_id == campaign_id, cycles.c.cycle == cycle)
                    .values(
                        acquisition=acquisition,
                        surrogate=None if surrogate is None else dict(surrogate),
                        chosen=[p.as_dict() for p in proposals],
                    )
                )
                return evaluation_ids
        except IntegrityError as exc:
            raise DuplicateCandidateError(
                f"a candidate of batch {ids} has already been evaluated or proposed in this campaign"
            ) from exc

    @reconnecting
    def mark_submitted(self, evaluation_id: int, external_id: str | None = None) -> None:
        """``proposed → submitted``, with the oracle's own handle for the job if it has one."""
        self._transition(evaluation_id, "submitted", submitted_at=_now(), external_id=external_id)

    @reconnecting
    def set_external_id(self, evaluation_id: int, external_id: str) -> None:
        """Remember the oracle's own id of a submitted job (to re-attach after a restart)."""
        with self.transaction() as conn:
            conn.execute(
                update(evaluations).where(evaluations.c.id == evaluation_id).values(external_id=external_id)
            )

    @reconnecting
    def record_result(self, evaluation_id: int, result: Result, run_id: int) -> None:
        """``submitted → done`` together with the result's rows, in one transaction."""
        now = _now()
        with self.transaction() as conn:
            self._transition(
                evaluation_id,
                "done",
                conn=conn,
                finished_at=now,
                cost=result.cost,
                metadata=dict(result.metadata),
                frame=None if result.frame is None else result.frame.as_dict(),
            )
            conn.execute(
                insert(results),
                [
                    {
                        "evaluation_id": evaluation_id,
                        "property": name,
                        "value": m.value,
                        "uncertainty": m.uncertainty,
                        "unit": m.unit,
                        "run_id": run_id,
                        "created_at": now,
                    }
                    for name, m in result.measurements.items()
                ],
            )

    @reconnecting
    def record_failure(
        self, evaluation_id: int, error: str, retryable: bool, cost: float | None = None
    ) -> None:
        """``proposed | submitted → failed``, with the reason (and its cost, if given: else the
        cost committed with the proposal stays)."""
        charged: dict[str, Any] = {} if cost is None else {"cost": cost}
        self._transition(
            evaluation_id, "failed", finished_at=_now(), error=error[:4000], retryable=retryable, **charged
        )

    def _transition(
        self, evaluation_id: int, status: Status, conn: Connection | None = None, **values: Any
    ) -> None:
        statement = (
            update(evaluations)
            .where(evaluations.c.id == evaluation_id, evaluations.c.status.in_(_ALLOWED_FROM[status]))
            .values(status=status, **values)
        )
        if conn is None:
            with self.transaction() as own:
                changed = own.execute(statement).rowcount
        else:
            changed = conn.execute(statement).rowcount
        if changed != 1:
            query = select(evaluations.c.status).where(evaluations.c.id == evaluation_id)
            if conn is None:
                with self.engine.connect() as read:
                    current = read.execute(query).scalar()
            else:
                current = conn.execute(query).scalar()
            raise LedgerError(
                f"evaluation {evaluation_id} cannot move to {status!r} from {current!r} "
                f"(allowed from {list(_ALLOWED_FROM[status])})"
            )


def _inserted_id(conn: Connection, statement: Insert) -> int:
    """Run a one-row INSERT; returns the new row's primary key."""
    key = conn.execute(statement).inserted_primary_key
    if key is None:  # only after an executemany, which the ledger never runs
        raise LedgerError("the database returned no primary key for an insert")
    return int(key[0])


def _write_predictions(conn: Connection, evaluation_id: int, by_property: Mapping[str, Prediction]) -> None:
    """Record a proposal's predictions (finite ones only) in the caller's transaction."""
    rows = [
        {
            "evaluation_id": evaluation_id,
            "property": name,
            "mean": p.mean,
            "latent_std": p.latent_std,
            "predictive_std": p.predictive_std,
            "std_scale": p.std_scale,
        }
        for name, p in by_property.items()
        if all(math.isfinite(v) for v in (p.mean, p.latent_std, p.predictive_std, p.std_scale))
    ]
    if rows:
        conn.execute(insert(predictions), rows)
