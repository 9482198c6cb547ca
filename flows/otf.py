"""On-the-fly MD training as a Prefect flow: :func:`otf_md_flow` runs :meth:`loop.otf.OTFRun.run`
with its stages as tasks.

Each round is ``advance`` tasks, one per active walker, submitted together to a thread runner
(the walkers share the committee and the dataset, so they stay in the flow's process); one
``label`` task per uncertain frame, which is the oracle's ``evaluate`` retried by Prefect when
it raises a retryable :class:`~oracles.errors.EvaluationFailed`; and a ``retrain`` task
(:meth:`~loop.otf.OTFRun.close_round`: retrain, recalibrate, stopping rule, checkpoint).

The ledger records each frame once, after its last attempt: :meth:`~loop.otf.OTFRun.label`
proposes and records the round's frames as in the plain loop, and sees the oracle through
:class:`TaskOracle`, whose futures are the ``label`` tasks. A retry is therefore a new attempt
of the same task run and never a second ledger row; a failure that outlasts its retries is
recorded and skipped, and setup errors (:class:`~oracles.errors.OracleSetupError`) are never
retried and stop the flow, as they stop the plain loop.

Each round publishes a table of the rounds so far (key ``<run>-round``) and the flow ends with
a markdown summary (``<run>-report``). The run holds its campaign lease (:mod:`loop.lease`,
keyed by the run name) from before the run is built, because building it settles frames a
dead process left in flight. The loop's own warnings (rollbacks, skipped labels) go to the
``alloop.otf`` logger; ``PREFECT_LOGGING_EXTRA_LOGGERS=alloop`` sends them to the Prefect UI.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.artifacts import artifact_key
from flows.tasks import OracleFailure, evaluate_candidate
from loop.candidate import Candidate
from loop.errors import DuplicateCandidateError
from loop.lease import CampaignLease
from loop.ledger import Ledger
from loop.otf import Label, OTFReport, OTFRun, Pause, RoundReport, Walker, build_otf_run, load_otf_config
from oracles.base import Oracle, Result

Logger = logging.Logger | logging.LoggerAdapter[Any]


# --- the oracle, seen through Prefect ----------------------------------------------------------


class TaskOracle(Oracle):
    """An oracle whose evaluations are Prefect ``label`` tasks, retried on retryable failures.

    :meth:`OTFRun.label` asks it for one future per frame and records each outcome once; the
    future settles only after the task's last attempt, so retries never reach the ledger.

    Args:
        oracle: The run's oracle (the DFT runner).
        runner: The thread runner the tasks go to (as wide as the oracle's capacity).
        retries: Retries of an evaluation that raised a retryable oracle error.
        retry_delay_s: Seconds between retries.
        tag: The current round's tag, for task run names.
    """

    def __init__(
        self,
        oracle: Oracle,
        runner: TaskRunner,
        retries: int,
        retry_delay_s: float,
        tag: Callable[[], str],
    ) -> None:
        self.oracle, self.runner, self.tag = oracle, runner, tag
        self.implemented_properties = oracle.implemented_properties
        self.capacity = oracle.capacity
        self.task = evaluate_candidate.with_options(
            name="label", retries=retries, retry_delay_seconds=retry_delay_s
        )

    def evaluate(self, candidate: Candidate) -> Result:
        return self.oracle.evaluate(candidate)

    def submit(
        self, candidates: Sequence[Candidate], on_start: Callable[[Candidate], None] | None = None
    ) -> list[Future[Result]]:
        """One ``label`` task per frame; ``on_start`` runs once per frame, before its first attempt.

        Raises:
            DuplicateCandidateError: the batch names a candidate twice.
        """
        ids = [c.id for c in candidates]
        if len(set(ids)) != len(ids):
            raise DuplicateCandidateError(f"batch names a candidate twice: {ids}")
        futures = []
        for candidate in candidates:
            if on_start is not None:
                on_start(candidate)
            name = f"label-{self.tag()}-{candidate.params.get('walker')}-s{candidate.params.get('step')}"
            future = self.runner.submit(
                self.task.with_options(task_run_name=name),
                {"candidate": candidate, "oracle": quote(self.oracle)},
            )
            futures.append(_settled(future))
        return futures

    def close(self) -> None:
        self.oracle.close()


def _settled(future: PrefectFuture[dict[str, Any]]) -> Future[Result]:
    """A future of the task's :class:`Result`, or of the oracle error it raised last."""
    outcome: Future[Result] = Future()

    def settle(done: PrefectFuture[dict[str, Any]]) -> None:
        try:
            outcome.set_result(Result.from_dict(done.result()))
        except OracleFailure as failure:
            outcome.set_exception(failure.original())
        except BaseException as exc:  # whatever the task raised reaches label(), as in the plain loop
            outcome.set_exception(exc)

    future.add_done_callback(settle)
    return outcome


# --- tasks -------------------------------------------------------------------------------------


@task(name="advance", cache_policy=NO_CACHE, persist_result=False)
def advance_walker(run: OTFRun, walker: Walker) -> Pause:
    """Run one walker until its committee is unsure, it finishes, or it is lost."""
    return run.advance(walker)


@task(name="retrain", cache_policy=NO_CACHE, persist_result=False)
def retrain(run: OTFRun, labels: Sequence[Label], started: float) -> RoundReport:
    """Retrain on the new frames, recalibrate, apply the stopping rule and checkpoint."""
    return run.close_round(labels, started)


# --- artifacts ---------------------------------------------------------------------------------


def _first_line(message: str | None) -> str:
    """An error's headline (the ledger keeps the traceback)."""
    return next(iter((message or "").splitlines()), "")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def round_rows(reports: Sequence[RoundReport]) -> list[dict[str, Any]]:
    """One row per round: what it labelled and where the run stood when it closed."""
    return [
        {
            "round": r.round,
            "MD steps": r.md_steps,
            "oracle calls": r.oracle_calls,
            "labelled": sum(label.failure is None and not label.reused for label in r.labels),
            "failed": sum(label.failure is not None and not label.reused for label in r.labels),
            "dataset size": r.dataset_size,
            "validation force MAE (eV/Å)": _rounded(r.validation_force_mae),
            "threshold (eV/Å)": _rounded(r.threshold),
            "seconds": round(r.seconds, 2),
        }
        for r in reports
    ]


def publish_round(name: str, reports: Sequence[RoundReport]) -> UUID:
    """The table of this flow run's rounds so far (the latest version holds them all)."""
    # prefect's async_dispatch types the result as R | Coroutine; called from sync code it is R
    return cast(
        UUID,
        create_table_artifact(
            round_rows(reports),
            key=artifact_key(name, "round"),
            description=f"On-the-fly run {name}, round {reports[-1].round}: every round of this flow run "
            "(validation force MAE: the committee on each round's new frames before it learnt them).",
        ),
    )


def summary_markdown(report: OTFReport, reports: Sequence[RoundReport], failures: Sequence[str]) -> str:
    """The end-of-run summary: the report's numbers, the rounds, the failed oracle calls."""
    lines = [
        f"# On-the-fly run {report.name}",
        "",
        f"{report.md_steps} MD steps, {report.oracle_calls} oracle calls "
        f"({100 * report.oracle_step_fraction:.2f}% of steps, {report.failed_calls} failed), "
        f"{report.dataset_size} labelled frames, {report.rounds} rounds, {report.retrains} retrains, "
        f"{report.rollbacks} rollbacks; threshold {report.threshold:.3f} eV/Å.",
        "",
    ]
    if report.resumed_from_steps is not None:
        lines += [f"Resumed from the checkpoint at steps {report.resumed_from_steps}.", ""]
    if report.stopped_calling:
        lines += [
            f"Stopped calling the oracle at step {report.stopped_calling_at_step}: {report.stopped_calling}.",
            "",
        ]
    if report.final_fit_frames is not None:
        lines += [f"Final fit: refitted from scratch on {report.final_fit_frames} frames.", ""]
    if report.lost_walkers:
        lines += [f"**Lost walkers:** {', '.join(report.lost_walkers)}.", ""]
    rows = round_rows(reports)
    if rows:
        lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        for row in rows:
            lines.append("| " + " | ".join("—" if v is None else str(v) for v in row.values()) + " |")
        lines.append("")
    if failures:
        lines += ["Failed oracle calls (recorded and skipped):", ""]
        lines += [f"- {failure}" for failure in failures]
    return "\n".join(lines)


def publish_summary(run: OTFRun, report: OTFReport, reports: Sequence[RoundReport]) -> UUID:
    """The end-of-run markdown artifact; the failed calls come from the ledger."""
    failures = [
        f"{e.params.get('walker')} step {e.params.get('step')}: {_first_line(e.error)[:200]}"
        for e in run.ledger.evaluations(run.id, ["failed"])
    ]
    # prefect's async_dispatch types the result as R | Coroutine; called from sync code it is R
    return cast(
        UUID,
        create_markdown_artifact(
            summary_markdown(report, reports, failures),
            key=artifact_key(run.name, "report"),
            description=f"On-the-fly run {run.name}: summary at the end of a flow run.",
        ),
    )


# --- the flow ----------------------------------------------------------------------------------


def _run_name() -> str:
    try:
        return str(tomllib.loads(Path(flow_run.parameters["config_path"]).read_text())["run"]["name"])
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return "otf"


@flow(name="alloop-otf", flow_run_name=_run_name, persist_result=False)
def otf_md_flow(
    config_path: str,
    retries: int = 2,
    retry_delay_s: float = 0.0,
    lock_wait_s: float = 0.0,
    lock_lease_s: float = 60.0,
) -> OTFReport:
    """Run (or resume) on-the-fly MD training until every walker has finished.

    Args:
        config_path: The run's TOML file (see ``examples/otf_md``).
        retries: Retries of an oracle call that failed with a retryable error.
        retry_delay_s: Seconds between retries.
        lock_wait_s: How long to wait for another run of the same name to finish.
        lock_lease_s: The lock's lease, renewed while held.

    Returns:
        The run's report, from the ledger and the checkpointed progress.

    Raises:
        ConfigError: the configuration is invalid.
        CampaignBusy: another run of the same name still held the lock after ``lock_wait_s``.
        OracleSetupError: the oracle cannot run at all.
        ValueError: ``retries`` or ``retry_delay_s`` is negative.
    """
    if retries < 0 or retry_delay_s < 0:
        raise ValueError(f"retries and retry_delay_s must be >= 0, got {retries} and {retry_delay_s}")
    logger = get_run_logger()
    config = load_otf_config(config_path)
    with Ledger(config.ledger_location) as ledger:
        label = f"flow run {flow_run.name or '?'} ({flow_run.id or 'no id'})"
        with CampaignLease(
            ledger, config.run.name, label, wait_s=lock_wait_s, lease_s=lock_lease_s, logger=logger
        ):
            run = build_otf_run(config, ledger)
            try:
                return _walk(run, retries, retry_delay_s, logger)
            finally:
                run.committee.close()
                run.oracle.close()


def _walk(run: OTFRun, retries: int, retry_delay_s: float, logger: Logger) -> OTFReport:
    """The body of :meth:`OTFRun.run`, with the stages as tasks and an artifact per round."""

    def tag() -> str:
        return artifact_key(run.name, f"r{run.progress.round + 1}")

    reports: list[RoundReport] = []

    def close(labels: Sequence[Label], started: float) -> None:
        for failed in (label for label in labels if label.failure is not None and not label.reused):
            logger.warning(
                "%s: labelling %s step %d failed and is skipped: %s",
                run.name,
                failed.walker,
                failed.step,
                _first_line(failed.failure),
            )
        # quote() wraps the arguments so prefect passes them through unhashed; its stubs do not know it
        report = retrain.with_options(task_run_name=f"retrain-{tag()}")(  # type: ignore[call-overload]
            quote(run), quote(labels), started
        )
        reports.append(report)
        publish_round(run.name, reports)
        mae = report.validation_force_mae
        logger.info(
            "%s, round %d: %d MD steps, %d oracle calls, %d frames, threshold %.3f eV/Å%s (%.1f s)",
            run.name,
            report.round,
            report.md_steps,
            report.oracle_calls,
            report.dataset_size,
            report.threshold,
            "" if mae is None else f", force MAE on new frames {mae:.3f} eV/Å",
            report.seconds,
        )

    if run.resumed_from is not None:
        logger.info("%s: resumed from its checkpoint at steps %s", run.name, run.resumed_from)
    oracle_pool: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(max_workers=max(1, run.oracle.capacity))
    walker_pool: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(max_workers=len(run.walkers))
    with oracle_pool as oracle_runner, walker_pool as walker_runner:
        run.oracle = TaskOracle(run.oracle, oracle_runner, retries, retry_delay_s, tag)
        if not run.committee.fitted:
            started = time.perf_counter()
            close(run.initial_labels(), started)
        while active := [w for w in run.walkers if not w.finished]:
            started = time.perf_counter()
            futures = [
                walker_runner.submit(
                    advance_walker.with_options(task_run_name=f"advance-{tag()}-{w.spec.name}"),
                    {"run": quote(run), "walker": quote(w)},
                )
                for w in active
            ]
            pauses = [future.result() for future in futures]
            close(run.label([p for p in pauses if p.kind == "uncertain"]), started)
    report = run.report()
    if report.stopped_calling:
        logger.info("%s stopped calling the oracle: %s", run.name, report.stopped_calling)
    publish_summary(run, report, reports)
    return report
