"""The call policy: when a walker's frame is labelled, when it is audited, when calling stops.

Pure logic over numbers (uncertainties, step counts, call counts): no atoms, no oracle, no
ledger, so each rule can be read, and tested, on its own.

**Doubts and audits.** After every step a walker compares the committee's uncertainty ``u``
(force spread, root mean square over atoms, eV/Å) with the threshold; above it, and at least
``min_steps_between_calls`` steps after its last call, the frame is labelled. Besides the frames
it doubts, a walker *audits*: it labels the frame it was least sure of since its last call once
its steps since then add up to ``audit_every``, each step counted as ``u / threshold`` (at most
1). The calibration then also sees frames below the threshold (the one closest to it, where a
miss is likeliest), and the audits go where the committee is least sure: a walker near the
threshold audits every ``audit_every`` steps, one far below it (a cold walker beside a hot one)
rarely. A walker that finishes audits its last stretch too, if its weighted steps reach half of
``audit_every`` (the audits it is worth, rounded): the end of a heating run, at the conditions
the potential is wanted for, would otherwise go unlabelled.

Until the calibration has its first ratios (*burning in*), walkers only audit, every
``audit_every`` steps (each counted fully). Labelling every frame above the guess would spend the
first calls on neighbours of the start: a guess below the committee's early spread labelled a
frame every ``min_steps_between_calls`` steps, so that 6 of 16 frames came from the first 30
steps of a 2000-step run. (Without audits, ``audit_every = 0``, the guess decides until then.)

**Stopping rule.** The loop stops calling the oracle once the last ``stop_after_calls`` calls
all met the tolerance and no walker has been above the threshold for ``stop_quiet_steps``
steps. The committee is not declared good enough for conditions a walker has yet to reach:
steps on a temperature ramp do not count as quiet, and the rule waits while any walker is
still on its ramp (a heating run calls until it is hot, even beside a walker that went quiet
long ago).
"""

from __future__ import annotations

from dataclasses import dataclass

from loop.otf.settings import OTFSettings


@dataclass(frozen=True)
class Step:
    """A walker's step as the calibration window and the stopping rule see it.

    Args:
        uncertainty: The committee's uncertainty there; ``None`` for a rollback.
        quiet: ``True`` counts towards the quiet steps, ``False`` resets them, ``None`` neither
            (a step on a temperature ramp, or labelling every k-th step).
    """

    uncertainty: float | None
    quiet: bool | None


@dataclass(frozen=True)
class Verdict:
    """What the policy makes of one accepted MD step.

    Args:
        doubt: Label this frame now (above the threshold, or the k-th step of ``label_every``).
        weight: What the step adds to the walker's weighted steps since its last call.
        step: The step as the calibration window and the stopping rule see it.
    """

    doubt: bool
    weight: float
    step: Step


class CallPolicy:
    """The rules of :mod:`loop.otf.policy` for one run's settings."""

    def __init__(self, settings: OTFSettings) -> None:
        self.settings = settings

    def judge(
        self,
        step: int,
        uncertainty: float,
        since_call: int,
        threshold: float,
        burning_in: bool,
        ramping: bool,
    ) -> Verdict:
        """The verdict on a walker's accepted step.

        Args:
            step: The walker's step.
            uncertainty: The committee's uncertainty on its frame (eV/Å).
            since_call: Steps since the walker last called the oracle.
            threshold: The current threshold (eV/Å).
            burning_in: Whether the calibration is still on its initial guess.
            ramping: Whether the walker is still on its temperature ramp.
        """
        s = self.settings
        if s.label_every is not None:
            return Verdict(step % s.label_every == 0, 0.0, Step(uncertainty, None))
        above = uncertainty > threshold
        quiet = False if above else None if ramping else True
        if s.audit_every > 0 and burning_in:  # audits only: see the module docstring
            return Verdict(False, 1.0, Step(uncertainty, quiet))
        doubt = above and since_call >= s.min_steps_between_calls
        return Verdict(doubt, min(uncertainty / threshold, 1.0), Step(uncertainty, quiet))

    def audit_due(self, weighted_steps: float) -> bool:
        """Whether a walker's weighted steps since its last call ask for an audit."""
        s = self.settings
        return s.label_every is None and s.audit_every > 0 and weighted_steps >= s.audit_every

    def closing_audit_due(self, weighted_steps: float) -> bool:
        """Whether a finished walker's last stretch is worth an audit (half of ``audit_every``)."""
        return self.settings.audit_every > 0 and weighted_steps >= self.settings.audit_every / 2

    def may_call(self, stopped: bool, calls: int) -> bool:
        """Whether the oracle may still be called: the stopping rule has not fired, budget left."""
        limit = self.settings.max_oracle_calls
        return not stopped and (limit is None or calls < limit)

    def budget_left(self, calls: int) -> int | None:
        """How many more calls ``max_oracle_calls`` allows after ``calls`` (``None``: no limit)."""
        limit = self.settings.max_oracle_calls
        return None if limit is None else max(limit - calls, 0)

    def within_tolerance_run(self, run: int, error: float) -> int:
        """The number of calls in a row that met the tolerance, after one that measured ``error``."""
        return run + 1 if error <= self.settings.tolerance_ev_per_a else 0

    @staticmethod
    def quiet_run(run: int, step: Step) -> int:
        """The number of quiet steps in a row (summed over walkers) after ``step``."""
        if step.quiet is False:
            return 0
        return run + 1 if step.quiet else run

    def stop_reason(
        self, calls_within_tolerance: int, quiet_steps: int, threshold: float, ramping: bool
    ) -> str | None:
        """Why calling should stop now, or ``None`` while the rule does not hold.

        Args:
            calls_within_tolerance: The last calls in a row that met the tolerance.
            quiet_steps: Steps in a row, over walkers, none above the threshold.
            threshold: The current threshold (eV/Å), for the message.
            ramping: Whether a walker that has not finished is still on its ramp.
        """
        s = self.settings
        if (
            s.stop_after_calls
            and s.label_every is None
            and calls_within_tolerance >= s.stop_after_calls
            and quiet_steps >= s.stop_quiet_steps
            and not ramping
        ):
            return (
                f"the last {calls_within_tolerance} oracle calls met the tolerance of "
                f"{s.tolerance_ev_per_a} eV/Å and no walker went above the threshold "
                f"({threshold:.3f} eV/Å) for {quiet_steps} steps"
            )
        return None
