"""The simulated lab: oracles that stand in for real experiments.

* :class:`DatasetLab` answers from a measured table (one replicate at random, or the mean),
  optionally with extra noise — for benchmarks on published data.
* :class:`EmulatedLab` runs a ground-truth function with configurable noise, latency,
  failure probability, cost per experiment and parallel capacity, so that every fault path of
  a campaign can be exercised without hardware.

Random draws depend only on the lab's seed, the candidate and the attempt number, never on
the order or thread in which candidates arrive: the same campaign gives the same data under
any executor.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from loop.candidate import Candidate
from loop.errors import ConfigError
from oracles.base import Measurement, Oracle, Result
from oracles.errors import EvaluationFailed, OracleSetupError
from oracles.functions import GroundTruth

if TYPE_CHECKING:  # the dataset lab is handed its table and space; it never builds them
    import pandas as pd

    from loop.space import SearchSpace


class _Attempts:
    """Thread-safe count of how often each candidate was tried, for reproducible draws."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def next(self, candidate_id: str) -> int:
        with self._lock:
            self._counts[candidate_id] += 1
            return self._counts[candidate_id]


def _rng(seed: int, candidate_id: str, attempt: int) -> np.random.Generator:
    try:
        key = int(candidate_id, 16)
    except ValueError:  # ids that are not hex digits ("mp-149"): hash them instead
        key = int(hashlib.sha256(candidate_id.encode()).hexdigest()[:16], 16)
    return np.random.default_rng([seed, key, attempt])


class DatasetLab(Oracle):
    """Answers from a table of measurements; rows with identical inputs are replicates.

    Args:
        table: One row per measurement.
        space: The space the table's input columns belong to (for candidate ids).
        outputs: Output columns → unit.
        mode: ``"replicate"`` returns one replicate at random, ``"mean"`` their mean.
        noise_sd: Extra Gaussian noise per output (same unit), 0 for none.
        seed: Seed of the replicate choice and the noise.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        space: SearchSpace,
        outputs: Mapping[str, str],
        mode: Literal["replicate", "mean"] = "mean",
        noise_sd: float = 0.0,
        seed: int = 0,
    ) -> None:
        missing = [c for c in [*space.names, *outputs] if c not in table.columns]
        if missing:
            raise ConfigError(f"column(s) {missing} not in table columns {list(table.columns)}")
        if mode not in ("replicate", "mean"):
            raise ConfigError(f"mode must be 'replicate' or 'mean', got {mode!r}")
        if not noise_sd >= 0:
            raise ConfigError(f"noise_sd must be >= 0, got {noise_sd}")
        self.implemented_properties = tuple(outputs)
        self.units = dict(outputs)
        self.mode, self.noise_sd, self.seed = mode, float(noise_sd), seed
        self._attempts = _Attempts()
        values = table[list(outputs)].to_numpy(dtype=float)
        replicates: dict[str, list[np.ndarray]] = {}
        for i, row in enumerate(table[space.names].to_dict("records")):
            replicates.setdefault(space.candidate(row).id, []).append(values[i])
        self._rows: dict[str, np.ndarray] = {cid: np.asarray(rows) for cid, rows in replicates.items()}

    @property
    def candidate_ids(self) -> list[str]:
        return list(self._rows)

    def truth(self, candidate_id: str) -> dict[str, float]:
        """The mean over replicates of a candidate (the benchmark's ground truth)."""
        return dict(zip(self.implemented_properties, self._rows[candidate_id].mean(axis=0), strict=True))

    def evaluate(self, candidate: Candidate) -> Result:
        rows = self._rows.get(candidate.id)
        if rows is None:
            raise EvaluationFailed(
                f"candidate {candidate.id} {dict(candidate.params)} is not in the dataset",
                retryable=False,
            )
        rng = _rng(self.seed, candidate.id, self._attempts.next(candidate.id))
        values = rows.mean(axis=0) if self.mode == "mean" else rows[rng.integers(len(rows))]
        if self.noise_sd:
            values = values + rng.normal(0.0, self.noise_sd, size=values.shape)
        spread = rows.std(axis=0, ddof=1) / np.sqrt(len(rows)) if len(rows) > 1 else None
        measurements = {
            name: Measurement(
                float(values[k]),
                # One replicate: only the added noise (if any) is a known uncertainty.
                (self.noise_sd or None) if spread is None else float(np.hypot(spread[k], self.noise_sd)),
                self.units[name],
            )
            for k, name in enumerate(self.implemented_properties)
        }
        return Result(candidate.id, measurements, metadata={"replicates": len(rows)})


class EmulatedLab(Oracle):
    """A function-backed emulator of an experiment, with every way a real one misbehaves.

    Args:
        function: Ground truth: parameter dictionary → property values.
        properties: Property name → unit, the properties reported (a subset of the function's).
        noise_sd: Gaussian noise per property (same unit); a number applies to all.
        latency_s: How long one experiment takes.
        failure_probability: Chance that an experiment fails (a retryable failure).
        invalid_probability: Chance that an experiment returns NaN (an invalid result).
        cost_per_experiment: The cost recorded for each experiment.
        capacity: Instruments working in parallel; more concurrent calls wait for one.
        seed: Seed of noise and failures.
        journal: Optional file where every experiment started and finished is appended, as a
            lab notebook would record it (one JSON line each).
    """

    def __init__(
        self,
        function: GroundTruth,
        properties: Mapping[str, str],
        noise_sd: float | Mapping[str, float] = 0.0,
        latency_s: float = 0.0,
        failure_probability: float = 0.0,
        invalid_probability: float = 0.0,
        cost_per_experiment: float = 1.0,
        capacity: int = 1,
        seed: int = 0,
        journal: str | Path | None = None,
    ) -> None:
        if not properties:
            raise ConfigError("an emulated lab needs at least one property")
        noise = noise_sd if isinstance(noise_sd, Mapping) else dict.fromkeys(properties, noise_sd)
        checks = {
            "latency_s": latency_s >= 0,
            "failure_probability": 0 <= failure_probability <= 1,
            "invalid_probability": 0 <= invalid_probability <= 1,
            "cost_per_experiment": cost_per_experiment >= 0,
            "capacity": capacity >= 1,
            "noise_sd": all(float(noise.get(p, 0.0)) >= 0 for p in properties),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"emulated lab parameter(s) out of range: {bad}")
        self.function = function
        self.implemented_properties = tuple(properties)
        self.units = dict(properties)
        self.noise_sd = {p: float(noise.get(p, 0.0)) for p in properties}
        self.latency_s, self.cost_per_experiment = float(latency_s), float(cost_per_experiment)
        self.failure_probability = float(failure_probability)
        self.invalid_probability = float(invalid_probability)
        self.capacity, self.seed = int(capacity), seed
        self.journal = Path(journal) if journal is not None else None
        self._instruments = threading.BoundedSemaphore(self.capacity)
        self._attempts = _Attempts()
        self._journal_lock = threading.Lock()

    def evaluate(self, candidate: Candidate) -> Result:
        attempt = self._attempts.next(candidate.id)
        rng = _rng(self.seed, candidate.id, attempt)
        with self._instruments:
            self._note("started", candidate, attempt)
            started = time.perf_counter()
            if self.latency_s:
                time.sleep(self.latency_s)
            try:
                truth = self.function(candidate.params)
            except Exception as exc:  # the ground truth itself is broken: not retryable
                raise OracleSetupError(
                    f"ground-truth function failed on {dict(candidate.params)}: {exc!r}"
                ) from exc
            unknown = [p for p in self.implemented_properties if p not in truth]
            if unknown:
                raise OracleSetupError(f"ground-truth function does not return {unknown}")
            failed = rng.random() < self.failure_probability
            invalid = rng.random() < self.invalid_probability
            measurements = {
                p: Measurement(
                    float("nan") if invalid else float(truth[p]) + rng.normal(0.0, self.noise_sd[p]),
                    self.noise_sd[p],
                    self.units[p],
                )
                for p in self.implemented_properties
            }
            seconds = time.perf_counter() - started
            self._note("failed" if failed else "finished", candidate, attempt)
        if failed:
            raise EvaluationFailed(f"simulated experiment failure on {candidate.id} (attempt {attempt})")
        return Result(
            candidate.id,
            measurements,
            cost=self.cost_per_experiment,
            metadata={"attempt": attempt, "seconds": round(seconds, 6)},
        )

    def _note(self, event: str, candidate: Candidate, attempt: int) -> None:
        if self.journal is None:
            return
        line = json.dumps({"event": event, "candidate": candidate.id, "attempt": attempt, "pid": os.getpid()})
        with self._journal_lock, self.journal.open("a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """The events an :class:`EmulatedLab` journal recorded, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
