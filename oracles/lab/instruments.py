"""The reference lab's instruments: a queue of runs worked by ``k`` simulated instruments.

:class:`Lab` keeps its runs in a :class:`~oracles.lab.store.LabStore`, lets each instrument
thread claim the oldest queued run, measures it with the emulator
(:class:`~oracles.simulated.EmulatedLab`) and settles it; it also holds the e-stop and draws
the injected faults (:class:`Faults`) that the HTTP layer applies.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loop.candidate import Candidate
from oracles.errors import EvaluationFailed
from oracles.lab.contract import Value
from oracles.lab.programs import PROGRAMS, Program
from oracles.lab.store import LabStore, RunRecord
from oracles.simulated import EmulatedLab

log = logging.getLogger("alloop.lab")


@dataclass(frozen=True)
class Faults:
    """Failure injection. Run faults happen on the instrument; HTTP faults on the routes under
    ``/v1/runs`` (not the event stream), one draw per request.

    Args:
        failure_probability: A run fails, retryably (a sample broke, a drift check failed).
        fatal_probability: A run fails for good (retrying the same parameters cannot help).
        error_probability: A 5xx answer: half before the request is handled (503), half
            after it was (500: the work is done, the answer says otherwise).
        drop_probability: The request is handled, then the connection is cut mid-response.
        slow_probability: The request is handled, then its answer waits ``slow_s``.
        slow_s: How long a slow answer waits.
        seed: Seed of the HTTP fault draws (run faults follow the lab's seed).
    """

    failure_probability: float = 0.0
    fatal_probability: float = 0.0
    error_probability: float = 0.0
    drop_probability: float = 0.0
    slow_probability: float = 0.0
    slow_s: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        probabilities = {k: v for k, v in asdict(self).items() if k.endswith("_probability")}
        bad = [k for k, v in probabilities.items() if not 0 <= v <= 1]
        if bad or self.error_probability + self.drop_probability + self.slow_probability > 1:
            raise ValueError(f"fault probabilities must lie in [0, 1] (HTTP ones summing to <= 1): {bad}")
        if self.slow_s < 0:
            raise ValueError("slow_s must be >= 0")


class Lab:
    """A simulated self-driving lab: a queue of runs, ``instruments`` working in parallel.

    Args:
        store: The lab's database.
        instruments: How many runs execute at once (k).
        latency_s: How long one run occupies an instrument.
        faults: Failure injection.
        programs: Available programs (default: :data:`PROGRAMS`).
        default_program: The program of runs that name none.
        seed: Seed of the measurement noise and the run faults.
        name: The lab's name, in provenance.
        journal: Optional file where the emulator notes every experiment it starts and ends.
    """

    def __init__(
        self,
        store: LabStore,
        instruments: int = 4,
        latency_s: float = 0.5,
        faults: Faults | None = None,
        programs: Mapping[str, Program] | None = None,
        default_program: str = "branin",
        seed: int = 0,
        name: str = "alloop reference lab",
        journal: str | Path | None = None,
    ) -> None:
        if instruments < 1 or latency_s < 0:
            raise ValueError("instruments must be >= 1 and latency_s >= 0")
        self.store = store
        self.instruments = int(instruments)
        self.latency_s = float(latency_s)
        self.faults = faults or Faults()
        self.programs = dict(programs or PROGRAMS)
        if default_program not in self.programs:
            raise ValueError(f"unknown default program {default_program!r}; known: {sorted(self.programs)}")
        self.default_program = default_program
        self.seed, self.name = seed, name
        self._emulators = {
            program.name: EmulatedLab(
                program.function,
                properties=program.properties,
                noise_sd=dict(program.noise_sd),
                failure_probability=self.faults.failure_probability,
                capacity=self.instruments,
                seed=seed,
                journal=journal,
            )
            for program in self.programs.values()
        }
        self._fatal_rng = random.Random(f"fatal-{seed}")
        self._fault_rng = random.Random(f"http-{self.faults.seed}")
        self._rng_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._abort: set[str] = set()
        self._running: dict[str, str] = {}
        self._changes = 0
        self.fault_counts: dict[str, int] = dict.fromkeys(("error_before", "error_after", "drop", "slow"), 0)

    # --- life cycle ---

    def start(self) -> None:
        """Fail runs a dead lab process left on an instrument, then start the instruments."""
        if self._threads:
            return
        interrupted = self.store.fail_interrupted()
        if interrupted:
            log.warning(
                "%d run(s) were on an instrument when the lab last stopped: failed (retryable)", interrupted
            )
        self._stop.clear()
        for k in range(self.instruments):
            thread = threading.Thread(
                target=self._instrument, args=(f"instrument-{k}",), daemon=True, name=f"lab-instrument-{k}"
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "lab %r started: %d instrument(s), latency %.3g s, %d run(s) queued",
            self.name,
            self.instruments,
            self.latency_s,
            self.store.counts()["queued"],
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking runs; runs on an instrument finish first. Queued runs stay queued."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout if timeout is not None else self.latency_s + 10.0)
        self._threads = []

    @property
    def estopped(self) -> bool:
        return bool(self.store.get_state("estop", False))

    @property
    def changes(self) -> int:
        """A counter that moves whenever any run changes state (for event streams)."""
        return self._changes

    def _changed(self) -> None:
        self._changes += 1
        with self._wake:
            self._wake.notify_all()

    # --- operations ---

    def submit(
        self, key: str, campaign: str, candidate_id: str, program: str, parameters: Mapping[str, Any]
    ) -> tuple[RunRecord, bool]:
        run, created = self.store.create_run(key, campaign, candidate_id, program, parameters)
        if created:
            self._changed()
        return run, created

    def cancel(self, run_id: str) -> RunRecord | None:
        run = self.store.cancel(run_id)
        if run is not None and run.status == "running":
            self._abort.add(run_id)
        self._changed()
        return run

    def estop(self, reason: str) -> int:
        """Engage the e-stop: every queued and running run is cancelled, no new run starts."""
        self.store.set_state("estop", True)
        self._abort.update(self._running.values())
        cancelled = self.store.cancel_all(f"e-stop: {reason}")
        log.warning("E-STOP engaged (%s): %d run(s) cancelled", reason, cancelled)
        self._changed()
        return cancelled

    def release(self) -> None:
        self.store.set_state("estop", False)
        log.warning("e-stop released")
        self._changed()

    def draw_http_fault(self) -> str | None:
        """Which HTTP fault (if any) this request suffers."""
        f = self.faults
        with self._rng_lock:
            r = self._fault_rng.random()
            half = self._fault_rng.random() < 0.5
        if r < f.error_probability:
            kind = "error_before" if half else "error_after"
        elif r < f.error_probability + f.drop_probability:
            kind = "drop"
        elif r < f.error_probability + f.drop_probability + f.slow_probability:
            kind = "slow"
        else:
            return None
        self.fault_counts[kind] += 1
        return kind

    # --- instruments ---

    def _instrument(self, instrument: str) -> None:
        while not self._stop.is_set():
            if self.estopped:
                self._stop.wait(0.05)
                continue
            try:
                run = self.store.claim_next(instrument)
            except Exception:  # a locked or broken database must not kill the instrument
                log.exception("%s could not claim a run", instrument)
                self._stop.wait(0.5)
                continue
            if run is None:
                with self._wake:
                    self._wake.wait(0.05)
                continue
            self._running[instrument] = run.id
            self._changed()
            try:
                self._execute(instrument, run)
            except Exception as exc:  # never leave a run running because of a bug
                log.exception("%s failed on run %s", instrument, run.id)
                self.store.finish(run.id, "failed", error=f"lab error: {exc!r}", retryable=True)
            finally:
                self._running.pop(instrument, None)
                self._abort.discard(run.id)
                self._changed()

    def _execute(self, instrument: str, run: RunRecord) -> None:
        started = time.perf_counter()
        deadline = started + self.latency_s
        while (left := deadline - time.perf_counter()) > 0:  # the instrument is busy
            if run.id in self._abort:
                break
            time.sleep(min(0.01, left))
        if run.id in self._abort:
            self.store.finish(run.id, "cancelled", error="cancelled while running", retryable=True)
            return
        program = self.programs[run.program]
        candidate = Candidate(run.parameters)  # the emulator's id: a hash of the parameters
        with self._rng_lock:
            fatal = self._fatal_rng.random() < self.faults.fatal_probability
        try:
            result = self._emulators[run.program].evaluate(candidate)
        except EvaluationFailed as exc:
            self.store.finish(run.id, "failed", error=str(exc), retryable=exc.retryable)
            return
        except Exception as exc:  # the ground truth itself is broken: retrying cannot help
            self.store.finish(run.id, "failed", error=f"instrument fault: {exc}", retryable=False)
            return
        if fatal:
            self.store.finish(
                run.id, "failed", error="sample destroyed (injected fatal failure)", retryable=False
            )
            return
        seconds = time.perf_counter() - started
        values = {
            name: Value(value=m.value, uncertainty=m.uncertainty, unit=m.unit).model_dump()
            for name, m in result.measurements.items()
        }
        current = self.store.get(run.id)
        self.store.finish(
            run.id,
            "succeeded",
            result={
                "values": values,
                "cost": result.cost,
                "instrument": instrument,
                "seconds": round(seconds, 6),
                "program": program.name,
                "attempt": result.metadata.get("attempt"),
                "started_at": current.started_at if current else None,
            },
        )
