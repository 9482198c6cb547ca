"""Tests of oracles.base: the Result contract and the default thread-pool submit."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from loop.candidate import Candidate
from loop.errors import DuplicateCandidateError
from loop.frame import Frame
from oracles.base import Measurement, Oracle, Result
from oracles.errors import EvaluationFailed, InvalidResult, OracleError, OracleSetupError


def good(**changes) -> Result:
    measurements = {"y": Measurement(1.5, 0.1, "eV"), "z": Measurement(-2.0, None, "")}
    measurements.update(changes.pop("measurements", {}))
    return Result("abc", measurements, **changes)


# --- Result.check -----------------------------------------------------------------------------


def test_a_good_result_passes_and_is_read_only():
    r = good(cost=0.0, metadata={"instrument": "xrd-1"})
    r.check(["y", "z"])
    r.check([])
    with pytest.raises(TypeError):
        r.measurements["y"] = Measurement(0.0)  # type: ignore[index]
    with pytest.raises(TypeError):
        r.metadata["instrument"] = "other"  # type: ignore[index]
    assert r.measurements["y"] == Measurement(1.5, 0.1, "eV")


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (good(measurements={"y": Measurement(math.nan)}), ["abc", "y", "not finite"]),
        (good(measurements={"z": Measurement(math.inf)}), ["z", "not finite"]),
        (good(measurements={"z": Measurement(-math.inf)}), ["z", "not finite"]),
        (good(measurements={"y": Measurement(1.0, -0.1)}), ["uncertainty of y", "non-negative"]),
        (good(measurements={"y": Measurement(1.0, math.nan)}), ["uncertainty of y"]),
        (good(measurements={"y": Measurement(1.0, math.inf)}), ["uncertainty of y"]),
        (good(cost=math.nan), ["cost"]),
        (good(cost=-1.0), ["cost -1.0"]),
        (good(cost=math.inf), ["cost"]),
    ],
)
def test_check_refuses_unusable_results(result, words):
    with pytest.raises(InvalidResult) as info:
        result.check(["y"])
    for word in words:
        assert word in str(info.value)


def test_check_refuses_a_non_positive_value_only_where_it_must_be_positive():
    good().check(["y", "z"], positive=["y"])  # z = -2.0 may be negative
    with pytest.raises(InvalidResult, match=r"abc: z = -2.0 is not > 0, and it is modelled on a log scale"):
        good().check(["y", "z"], positive=["y", "z"])


def test_check_refuses_missing_properties_naming_them():
    with pytest.raises(InvalidResult, match=r"abc lacks.*\['w', 'v'\]"):
        good().check(["y", "w", "v"])


def test_invalid_result_is_a_non_retryable_evaluation_failure_and_a_value_error():
    with pytest.raises(InvalidResult) as info:
        good(cost=-1.0).check([])
    error = info.value
    assert isinstance(error, EvaluationFailed)
    assert isinstance(error, ValueError)
    assert isinstance(error, OracleError)
    assert error.retryable is False


def test_error_retryability_defaults():
    assert EvaluationFailed("x").retryable is True
    assert EvaluationFailed("x", retryable=False).retryable is False
    assert OracleSetupError("x").retryable is False
    assert isinstance(OracleSetupError("x"), RuntimeError)


def test_check_refuses_non_numbers():
    with pytest.raises(InvalidResult, match="y"):
        good(measurements={"y": Measurement(None)}).check(["y"])  # type: ignore[arg-type]


# --- typed results and their round trips ------------------------------------------------------


def labelled(candidate_id: str = "abc", seed: int = 3) -> Frame:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    return Frame.from_atoms(
        atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(), id=candidate_id
    )


def test_measurement_round_trips_through_json():
    for m in (Measurement(1.5, 0.1, "eV"), Measurement(-2.0), Measurement(3, None, "%")):
        assert Measurement.from_dict(json.loads(json.dumps(m.as_dict()))) == m
    assert Measurement.from_dict({"value": 2.0}) == Measurement(2.0, None, "")
    with pytest.raises(InvalidResult, match=r"measurement needs a value; got keys \['unit'\]"):
        Measurement.from_dict({"unit": "eV"})


@pytest.mark.parametrize("frame", [None, labelled()], ids=["scalars only", "with a frame"])
def test_result_round_trips_through_json(frame):
    r = good(cost=0.5, metadata={"instrument": "xrd-1", "steps": [1, 2]}, frame=frame)
    back = Result.from_dict(json.loads(json.dumps(r.as_dict(), allow_nan=False)))
    assert back == r and back.as_dict() == r.as_dict()
    assert back != good(cost=0.5, metadata={"instrument": "xrd-1", "steps": [1, 2]}, frame=labelled("abc", 4))
    assert Result.from_dict({"candidate_id": "abc", "measurements": {}}) == Result("abc", {})


def test_a_results_frame_is_typed_and_read_only():
    r = good(frame=labelled())
    assert r.frame is not None
    assert r.frame.forces.shape == (4, 3) and r.frame.stress is not None and r.frame.stress.shape == (6,)
    for array in (r.frame.forces, r.frame.stress, r.frame.positions, r.frame.cell):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0.0
    back = Result.from_dict(r.as_dict())
    assert back.frame is not None and not back.frame.forces.flags.writeable
    r.check(["y"])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_forces_are_refused_as_an_invalid_result(bad):
    values = good(frame=labelled()).as_dict()
    values["frame"]["forces_ev_per_a"][1][2] = bad
    with pytest.raises(InvalidResult, match=r"result for abc: a label .* is not finite") as info:
        Result.from_dict(values)
    assert info.value.retryable is False


def test_from_dict_names_what_is_missing_or_wrong():
    with pytest.raises(InvalidResult, match="missing measurements"):
        Result.from_dict({"candidate_id": "abc"})
    frame = good(frame=labelled()).as_dict()["frame"]
    without_forces = {k: v for k, v in frame.items() if k != "forces_ev_per_a"}
    with pytest.raises(InvalidResult, match="missing forces_ev_per_a"):
        Result.from_dict({"candidate_id": "abc", "measurements": {}, "frame": without_forces})
    with pytest.raises(InvalidResult, match="result for abc carries the frame of other"):
        Result.from_dict({"candidate_id": "abc", "measurements": {}, "frame": {**frame, "id": "other"}})


def test_a_frame_of_another_candidate_is_refused():
    with pytest.raises(ValueError, match="result for abc carries the frame of xyz"):
        good(frame=labelled("xyz"))


# --- submit -----------------------------------------------------------------------------------


class Sleeper(Oracle):
    """Sleeps, records when each evaluation ran, and answers x squared."""

    implemented_properties = ("y",)

    def __init__(self, capacity: int, seconds: float = 0.15) -> None:
        self.capacity = capacity
        self.seconds = seconds
        self.lock = threading.Lock()
        self.spans: list[tuple[float, float]] = []
        self.threads: set[int] = set()

    def evaluate(self, candidate: Candidate) -> Result:
        start = time.perf_counter()
        time.sleep(self.seconds)
        with self.lock:
            self.spans.append((start, time.perf_counter()))
            self.threads.add(threading.get_ident())
        x = float(candidate.params["x"])
        if x < 0:
            raise EvaluationFailed(f"negative x {x}")
        return Result(candidate.id, {"y": Measurement(x * x)})


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda t: (t[0], t[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def cands(*xs: float) -> list[Candidate]:
    return [Candidate({"x": x}) for x in xs]


def test_submit_returns_futures_in_order():
    oracle = Sleeper(capacity=3, seconds=0.01)
    batch = cands(3.0, 1.0, 2.0, 0.5)
    futures = oracle.submit(batch)
    assert len(futures) == 4
    results = [f.result(timeout=5) for f in futures]
    assert [r.candidate_id for r in results] == [c.id for c in batch]
    assert [r.measurements["y"].value for r in results] == [9.0, 1.0, 4.0, 0.25]


def test_submit_runs_up_to_capacity_in_parallel():
    oracle = Sleeper(capacity=2, seconds=0.15)
    t0 = time.perf_counter()
    for f in oracle.submit(cands(1, 2, 3, 4, 5, 6)):
        f.result(timeout=10)
    elapsed = time.perf_counter() - t0
    assert max_overlap(oracle.spans) == 2
    assert len(oracle.threads) == 2
    assert elapsed >= 3 * 0.15 * 0.95  # six jobs, two at a time


def test_submit_with_capacity_one_is_sequential():
    oracle = Sleeper(capacity=1, seconds=0.03)
    for f in oracle.submit(cands(1, 2, 3)):
        f.result(timeout=5)
    assert max_overlap(oracle.spans) == 1


def test_submit_never_opens_more_workers_than_candidates():
    oracle = Sleeper(capacity=8, seconds=0.05)
    for f in oracle.submit(cands(1, 2)):
        f.result(timeout=5)
    assert len(oracle.threads) <= 2


def test_submit_rejects_duplicate_ids_before_running_anything():
    oracle = Sleeper(capacity=2, seconds=0.01)
    with pytest.raises(DuplicateCandidateError, match="twice"):
        oracle.submit(cands(1.0, 2.0, 1.0))
    time.sleep(0.05)
    assert oracle.spans == []


def test_failures_travel_in_their_own_future():
    oracle = Sleeper(capacity=2, seconds=0.01)
    ok, bad = oracle.submit(cands(2.0, -1.0))
    assert ok.result(timeout=5).measurements["y"].value == 4.0
    with pytest.raises(EvaluationFailed, match="negative x"):
        bad.result(timeout=5)


def test_submit_of_nothing_is_nothing():
    assert Sleeper(capacity=2).submit([]) == []


def test_context_manager_and_handle():
    with Sleeper(capacity=1, seconds=0.0) as oracle:
        (future,) = oracle.submit(cands(1.0))
        future.result(timeout=5)
        assert oracle.handle(future) is None
        future.external_id = "job-1"  # type: ignore[attr-defined]
        assert oracle.handle(future) == "job-1"


def test_oracle_is_abstract():
    with pytest.raises(TypeError):
        Oracle()  # type: ignore[abstract]
