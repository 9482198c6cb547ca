"""Labelling paused frames: the oracle's results as training frames, and the committee's error on them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np

from loop.candidate import Candidate
from loop.frame import Frame
from loop.ledger import EvaluationRecord, Ledger, Proposal
from loop.otf.reports import Label
from loop.otf.walker import Pause
from oracles.base import Oracle, Result
from oracles.errors import EvaluationFailed
from surrogates.mlip import force_error, force_z_scores

log = logging.getLogger("alloop.otf")


def frame_from_result(result: Result) -> Frame:
    """The labelled frame of an oracle result.

    Raises:
        ValueError: the result carries no frame (an oracle that labels no structures).
    """
    if result.frame is None:
        raise ValueError(f"oracle result for {result.candidate_id} carries no labelled frame")
    return result.frame


def frame_of(record: EvaluationRecord) -> Frame:
    """The labelled frame of a done evaluation in the ledger.

    Raises:
        ValueError: the evaluation holds no frame.
    """
    if record.frame is None:
        raise ValueError(f"evaluation of {record.candidate_id} holds no labelled frame")
    return record.frame


def compare(pause: Pause, candidate_id: str, frame: Frame, reused: bool = False) -> Label:
    """The label of ``pause``'s frame: the committee's errors there, before it learnt the frame."""
    if pause.prediction is None:
        return Label(pause.walker, pause.step, candidate_id, pause.uncertainty, reused=reused)
    difference = pause.prediction.forces.mean(axis=0) - frame.forces
    return Label(
        pause.walker,
        pause.step,
        candidate_id,
        pause.uncertainty,
        error=force_error(pause.prediction.forces.mean(axis=0), frame.forces),
        mae=float(np.abs(difference).mean()),
        reused=reused,
        force_z=tuple(force_z_scores(pause.prediction, frame.forces).tolist()),
    )


class Labeller:
    """Sends paused frames to the oracle and records every outcome in the ledger at once.

    Args:
        name: The run's name (in log lines).
        ledger: Where every call is recorded.
        campaign_id: The run's campaign in the ledger.
        run_id: This process's run of it.
    """

    def __init__(self, name: str, ledger: Ledger, campaign_id: int, run_id: int) -> None:
        self.name, self.ledger = name, ledger
        self.id, self.run_id = campaign_id, run_id

    def calls(self) -> int:
        """Oracle calls so far (done or failed)."""
        return sum(self.ledger.status_counts(self.id).get(s, 0) for s in ("done", "failed"))

    def label(self, pauses: Sequence[Pause], oracle: Oracle, budget: int | None = None) -> list[Label]:
        """Label the paused frames, in order; see :meth:`~loop.otf.run.OTFRun.label`.

        Args:
            pauses: Frames to label (``atoms`` set).
            oracle: Labels them; its results carry a ``frame`` (energy, forces, optionally stress).
            budget: Most new oracle calls (``None``: no limit); frames beyond it are left out
                (walkers that paused together near the limit): the budget is a hard cap.
        """
        from pymatgen.io.ase import AseAtomsAdaptor

        from loop.structures import structure_to_params

        if not pauses:
            return []
        cycle = self.ledger.open_cycle(self.id, self.run_id)
        known = {e.candidate_id: e for e in self.ledger.evaluations(self.id)}
        candidates, fresh = [], []
        labels: dict[str, Label] = {}
        for pause in pauses:
            assert pause.atoms is not None
            params = {
                **structure_to_params(AseAtomsAdaptor.get_structure(pause.atoms), prototype="otf"),
                "walker": pause.walker,
                "step": pause.step,
            }
            candidate = Candidate(params)
            candidates.append((pause, candidate))
            if candidate.id in known:
                labels[candidate.id] = self._label_from(pause, candidate.id, known[candidate.id])
            else:
                fresh.append(candidate)
        if budget is not None:
            over = {c.id for c in fresh[budget:]}
            fresh = [c for c in fresh if c.id not in over]
            candidates = [(p, c) for p, c in candidates if c.id not in over]
        if fresh:
            ids = self.ledger.propose(self.id, self.run_id, cycle, [Proposal(c) for c in fresh], "otf", None)
            evaluation_of = {c.id: i for c, i in zip(fresh, ids, strict=True)}

            def started(candidate: Candidate) -> None:
                self.ledger.mark_submitted(evaluation_of[candidate.id])

            futures: list[Future[Result]] = oracle.submit(fresh, on_start=started)
            by_id = {p_c[1].id: p_c[0] for p_c in candidates}
            for candidate, future in zip(fresh, futures, strict=True):
                labels[candidate.id] = self._record(
                    by_id[candidate.id], candidate, evaluation_of[candidate.id], future
                )
        self.ledger.close_cycle(self.id, cycle)
        return [labels[c.id] for _, c in candidates]

    def _record(
        self, pause: Pause, candidate: Candidate, evaluation_id: int, future: Future[Result]
    ) -> Label:
        try:
            result = future.result()
            frame = frame_from_result(result)
        except (EvaluationFailed, ValueError) as exc:
            retryable = bool(getattr(exc, "retryable", False))
            self.ledger.record_failure(evaluation_id, f"{type(exc).__name__}: {exc}", retryable)
            log.warning(
                "%s: labelling %s step %d failed and is skipped: %s", self.name, pause.walker, pause.step, exc
            )
            return Label(pause.walker, pause.step, candidate.id, pause.uncertainty, failure=str(exc))
        self.ledger.record_result(evaluation_id, result, self.run_id)
        return compare(pause, candidate.id, frame)

    @staticmethod
    def _label_from(pause: Pause, candidate_id: str, record: EvaluationRecord) -> Label:
        """The label of a frame the ledger already holds (from before a restart)."""
        if record.status != "done":
            return Label(
                pause.walker, pause.step, candidate_id, pause.uncertainty, failure=record.error, reused=True
            )
        return compare(pause, candidate_id, frame_of(record), reused=True)
