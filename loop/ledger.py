"""The ledger: a campaign's single source of truth, in a real database.

SQLite by default (a file, WAL journal, one transaction per state change), or any
SQLAlchemy URL (PostgreSQL for concurrent writers). The tables, their version and the
migrations of older ledgers are in :mod:`loop.schema`; how the database is connected to (and
reconnected to, when a server goes away) in :mod:`loop.database`.

A result is committed in the transaction that marks its evaluation done, the moment it
arrives. The unique (campaign, candidate, fidelity) key makes evaluating a candidate twice at
one fidelity impossible, whatever process asks.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from sqlalchemy import Insert, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from loop.calibration import CalibrationPoint, Prediction
from loop.candidate import Candidate
from loop.database import create_engine, database_reason, masked, retrying
from loop.errors import CampaignError, DuplicateCandidateError, LedgerError
from loop.frame import Frame
from loop.provenance import package_versions, process_info
from loop.schema import (
    DEFAULT_FIDELITY,
    campaigns,
    candidates,
    cycles,
    evaluations,
    predictions,
    prepare,
    results,
    runs,
)
from oracles.base import Result

Status = Literal["proposed", "submitted", "done", "failed"]
STATUSES: tuple[Status, ...] = ("proposed", "submitted", "done", "failed")
_ALLOWED_FROM: dict[Status, tuple[Status, ...]] = {
    "submitted": ("proposed",),
    "done": ("submitted",),
    "failed": ("proposed", "submitted"),
}


P = ParamSpec("P")
R = TypeVar("R")


def _now() -> datetime:
    return datetime.now(UTC)


def _reconnecting(method: Callable[Concatenate[Ledger, P], R]) -> Callable[Concatenate[Ledger, P], R]:
    """Run a ledger method again when the database connection was lost (:meth:`Ledger.retrying`)."""

    @functools.wraps(method)
    def again(self: Ledger, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.retrying(lambda: method(self, *args, **kwargs))

    return again


def ledger_url(location: str | Path) -> str:
    """An SQLAlchemy URL for a file path (SQLite) or a URL given as is."""
    text = str(location)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluation row, with its candidate's parameters and its results."""

    id: int
    candidate_id: str
    params: Mapping[str, Any]
    cycle: int
    status: Status
    external_id: str | None = None
    cost: float | None = None
    error: str | None = None
    retryable: bool | None = None
    values: Mapping[str, float] = field(default_factory=dict)
    uncertainties: Mapping[str, float | None] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """What the oracle reported besides the values (provenance, raw-data references...)."""
    frame: Frame | None = None
    """The labelled structure of the result (relaxed structure, energy, forces, stress), if any."""
    fidelity: str = DEFAULT_FIDELITY
    """The fidelity (``[[oracles]]`` entry) that measures it."""

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.params, self.candidate_id)


@dataclass(frozen=True)
class CycleRecord:
    """One cycle row."""

    cycle: int
    status: Literal["open", "closed"]
    acquisition: str | None
    surrogate: Mapping[str, Any] | None
    chosen: Sequence[Mapping[str, Any]] | None
    stop_reason: str | None


@dataclass(frozen=True)
class Proposal:
    """A candidate chosen by a cycle, and why: acquisition value, posterior mean and std;
    ``predictions`` per objective are its calibration record (:mod:`loop.calibration`)."""

    candidate: Candidate
    acquisition_value: float | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    predictions: Mapping[str, Prediction] | None = None
    fidelity: str = DEFAULT_FIDELITY
    """Where it is to be measured (multi-fidelity campaigns)."""
    cost: float | None = None
    """What it will cost, committed with the proposal (multi-fidelity campaigns; else the
    oracle's reported cost is recorded with the result)."""

    def as_dict(self) -> dict[str, Any]:
        fidelity = {} if self.fidelity == DEFAULT_FIDELITY else {"fidelity": self.fidelity}
        return {
            "candidate_id": self.candidate.id,
            **fidelity,
            "acquisition_value": _finite_or_none(self.acquisition_value),
            "mean": None if self.mean is None else [_finite_or_none(v) for v in self.mean],
            "std": None if self.std is None else [_finite_or_none(v) for v in self.std],
        }


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class Ledger:
    """Durable record of campaigns; see the module docstring for the tables.

    Args:
        location: A file path (SQLite) or an SQLAlchemy URL.
        create: Create a SQLite file that does not exist yet (else refuse it).
        reconnect_s: Once open, how long each operation keeps trying again while the
            connection to a database server is lost (a restart, a network cut).

    Raises:
        LedgerError: the ledger cannot be used: a missing file (``create=False``) or folder, a
            file that is not a SQLite database, a folder or file it may not write to, an
            unreachable server. The message is one line naming the path (or URL, its password
            masked). Opening does not wait for a server: a wrong URL fails at once.
    """

    def __init__(self, location: str | Path, create: bool = True, reconnect_s: float = 60.0) -> None:
        self.url = ledger_url(location)
        self.path = _sqlite_path(self.url)
        self.reconnect_s = reconnect_s
        if self.path is not None:
            _check_file(self.path, create)
        try:
            self.engine: Engine = create_engine(self.url)
        except (SQLAlchemyError, ImportError) as exc:  # a malformed URL, a driver not installed
            raise LedgerError(f"ledger {self.where} cannot be used: {exc}") from exc
        try:
            # In a write transaction that serializes on the tables (SQLite's write lock,
            # PostgreSQL's advisory lock): two processes creating a new ledger at once take turns.
            with self.transaction() as conn:
                prepare(conn, self.where)
        except LedgerError:
            self.engine.dispose()
            raise
        except (SQLAlchemyError, sqlite3.Error) as exc:
            self.engine.dispose()
            raise LedgerError(f"ledger {self.where} cannot be used: {database_reason(exc)}") from exc

    @property
    def where(self) -> str:
        """The ledger's file (quoted) or URL (password masked), for messages."""
        return repr(str(self.path)) if self.path is not None else masked(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed on exit, rolled back on error."""
        with self.engine.execution_options(write=True).begin() as conn:
            yield conn

    def retrying(self, work: Callable[[], R]) -> R:
        """``work()`` (whole transactions on this ledger), run again while the connection to
        the database server is lost, for up to ``reconnect_s``; see :func:`loop.database.retrying`.

        Raises:
            LedgerError: still unreachable after ``reconnect_s``; one line naming the ledger.
        """
        return retrying(work, self.where, self.reconnect_s)

    # --- campaigns and runs -----------------------------------------------------------------

    @_reconnecting
    def open_campaign(self, name: str, config: Mapping[str, Any], config_hash: str, seed: int) -> int:
        """The id of campaign ``name``, created if new.

        Raises:
            CampaignError: the campaign exists with another configuration hash.
        """
        with self.transaction() as conn:
            row = conn.execute(select(campaigns).where(campaigns.c.name == name)).first()
            if row is not None:
                if row.config_hash != config_hash:
                    raise CampaignError(
                        f"campaign {name!r} already exists in {masked(self.url)} with a different "
                        f"configuration (hash {row.config_hash}, now {config_hash}); only [stopping] "
                        "may change on resume — use another campaign name or ledger"
                    )
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

    @_reconnecting
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

    @_reconnecting
    def set_stop_reason(self, campaign_id: int, reason: str | None) -> None:
        """Remember why the campaign stopped (``None``: it has not, or may go on again);
        writes only when the reason changed."""
        with self.transaction() as conn:
            conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id, campaigns.c.stop_reason.is_distinct_from(reason))
                .values(stop_reason=reason, stopped_at=None if reason is None else _now())
            )

    @_reconnecting
    def campaign_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(campaigns.c.name).order_by(campaigns.c.id)).scalars())

    @_reconnecting
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

    # --- cycles -----------------------------------------------------------------------------

    @_reconnecting
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

    @_reconnecting
    def close_cycle(self, campaign_id: int, cycle: int, stop_reason: str | None = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                update(cycles)
                .where(cycles.c.campaign_id == campaign_id, cycles.c.cycle == cycle)
                .values(status="closed", finished_at=_now(), stop_reason=stop_reason)
            )

    @_reconnecting
    def cycles(self, campaign_id: int) -> list[CycleRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(cycles).where(cycles.c.campaign_id == campaign_id).order_by(cycles.c.cycle)
            ).all()
        return [
            CycleRecord(r.cycle, r.status, r.acquisition, r.surrogate, r.chosen, r.stop_reason) for r in rows
        ]

    # --- evaluations ------------------------------------------------------------------------

    @_reconnecting
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

    @_reconnecting
    def mark_submitted(self, evaluation_id: int, external_id: str | None = None) -> None:
        """``proposed → submitted``, with the oracle's own handle for the job if it has one."""
        self._transition(evaluation_id, "submitted", submitted_at=_now(), external_id=external_id)

    @_reconnecting
    def set_external_id(self, evaluation_id: int, external_id: str) -> None:
        """Remember the oracle's own id of a submitted job (to re-attach after a restart)."""
        with self.transaction() as conn:
            conn.execute(
                update(evaluations).where(evaluations.c.id == evaluation_id).values(external_id=external_id)
            )

    @_reconnecting
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

    @_reconnecting
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

    @_reconnecting
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

    @_reconnecting
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

    @_reconnecting
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

    @_reconnecting
    def spent_by_fidelity(self, campaign_id: int) -> dict[str, tuple[int, float]]:
        """:meth:`spent` per fidelity (only those with evaluations)."""
        reached_oracle = evaluations.c.status.in_(["proposed", "submitted", "done"]) | (
            evaluations.c.submitted_at.is_not(None)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(evaluations.c.fidelity, func.count(), func.coalesce(func.sum(evaluations.c.cost), 0.0))
                .where(evaluations.c.campaign_id == campaign_id, reached_oracle)
                .group_by(evaluations.c.fidelity)
                .order_by(evaluations.c.fidelity)
            ).all()
        return {fidelity: (int(n), round(float(cost), 12)) for fidelity, n, cost in rows}


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


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (``None`` for other databases and in-memory SQLite)."""
    prefix = "sqlite:///"
    return Path(url.removeprefix(prefix)) if url.startswith(prefix) and url != prefix else None


def _check_file(path: Path, create: bool) -> None:
    """Refuse a SQLite file that cannot be a ledger, before anything touches it."""
    if path.exists():
        if not path.is_file():
            raise LedgerError(f"ledger {str(path)!r} is not a file")
        return
    if not create:
        raise LedgerError(f"ledger {str(path)!r} does not exist")
    if not path.parent.is_dir():
        raise LedgerError(f"ledger {str(path)!r}: its folder {str(path.parent)!r} does not exist")
