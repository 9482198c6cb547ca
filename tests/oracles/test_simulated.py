"""Tests of oracles.simulated (EmulatedLab, DatasetLab) and oracles.functions."""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from loop.candidate import Candidate
from loop.errors import ConfigError
from loop.space import Categorical, Continuous, Integer, SearchSpace
from oracles.errors import EvaluationFailed, InvalidResult, OracleSetupError
from oracles.functions import FUNCTIONS, branin, resolve_function, thin_film
from oracles.simulated import DatasetLab, EmulatedLab, read_journal


def line(params) -> dict[str, float]:
    """y = 2x + 1, z = -x."""
    x = float(params["x"])
    return {"y": 2 * x + 1, "z": -x}


def cands(n: int) -> list[Candidate]:
    return [Candidate({"x": float(i)}) for i in range(n)]


def values(result) -> dict[str, float]:
    return {k: m.value for k, m in result.measurements.items()}


# --- EmulatedLab ------------------------------------------------------------------------------


def test_noiseless_lab_returns_the_function_with_units_and_cost():
    lab = EmulatedLab(line, {"y": "eV", "z": "nm"}, cost_per_experiment=2.5)
    c = Candidate({"x": 3.0})
    r = lab.evaluate(c)
    assert r.candidate_id == c.id
    assert values(r) == {"y": 7.0, "z": -3.0}
    assert r.measurements["y"].unit == "eV" and r.measurements["z"].unit == "nm"
    assert r.measurements["y"].uncertainty == 0.0
    assert r.cost == 2.5
    assert r.metadata["attempt"] == 1
    assert lab.implemented_properties == ("y", "z")
    r.check(["y", "z"])


def test_only_the_declared_properties_are_reported():
    r = EmulatedLab(line, {"z": ""}).evaluate(Candidate({"x": 1.0}))
    assert list(r.measurements) == ["z"]


def test_draws_depend_on_seed_candidate_and_attempt_not_order():
    batch = cands(8)
    forward = EmulatedLab(line, {"y": "", "z": ""}, noise_sd=0.5, seed=4)
    backward = EmulatedLab(line, {"y": "", "z": ""}, noise_sd=0.5, seed=4)
    first = {c.id: values(forward.evaluate(c)) for c in batch}
    second_attempt = {c.id: values(forward.evaluate(c)) for c in batch}
    reverse = {c.id: values(backward.evaluate(c)) for c in reversed(batch)}
    assert reverse == first
    assert all(second_attempt[c.id] != first[c.id] for c in batch)  # attempt 2 draws anew
    assert {c.id: values(backward.evaluate(c)) for c in batch} == second_attempt
    other_seed = EmulatedLab(line, {"y": "", "z": ""}, noise_sd=0.5, seed=5)
    assert values(other_seed.evaluate(batch[0])) != first[batch[0].id]


def test_draws_do_not_depend_on_threads():
    batch = cands(12)
    serial = EmulatedLab(line, {"y": ""}, noise_sd=1.0, seed=1, capacity=4)
    threaded = EmulatedLab(line, {"y": ""}, noise_sd=1.0, seed=1, capacity=4)
    expected = {c.id: values(serial.evaluate(c)) for c in batch}
    got = {r.candidate_id: values(r) for r in (f.result(timeout=10) for f in threaded.submit(batch))}
    assert got == expected


def test_noise_level_matches_noise_sd():
    lab = EmulatedLab(lambda p: {"y": 0.0, "z": 10.0}, {"y": "", "z": ""}, noise_sd={"y": 0.3}, seed=0)
    results = [lab.evaluate(c) for c in cands(400)]
    y = np.array([r.measurements["y"].value for r in results])
    assert abs(y.mean()) < 0.06  # 4 standard errors
    assert y.std(ddof=1) == pytest.approx(0.3, rel=0.15)
    assert {r.measurements["z"].value for r in results} == {10.0}  # a property without noise
    assert results[0].measurements["y"].uncertainty == 0.3
    assert results[0].measurements["z"].uncertainty == 0.0


def test_failure_probability_one_always_fails_retryably(tmp_path):
    lab = EmulatedLab(line, {"y": ""}, failure_probability=1.0, journal=tmp_path / "j.jsonl")
    c = Candidate({"x": 1.0})
    with pytest.raises(EvaluationFailed, match=f"{c.id}.*attempt 1") as info:
        lab.evaluate(c)
    assert info.value.retryable is True
    with pytest.raises(EvaluationFailed, match="attempt 2"):
        lab.evaluate(c)
    assert [e["event"] for e in read_journal(tmp_path / "j.jsonl")] == ["started", "failed"] * 2


def test_failure_rate_is_about_the_probability():
    lab = EmulatedLab(line, {"y": ""}, failure_probability=0.3, seed=2)
    failures = 0
    for c in cands(300):
        try:
            lab.evaluate(c)
        except EvaluationFailed:
            failures += 1
    assert 0.2 < failures / 300 < 0.4


def test_invalid_probability_one_returns_nan_results():
    lab = EmulatedLab(line, {"y": "eV"}, invalid_probability=1.0, noise_sd=0.1)
    r = lab.evaluate(Candidate({"x": 1.0}))
    assert math.isnan(r.measurements["y"].value)
    with pytest.raises(InvalidResult, match="not finite"):
        r.check(["y"])


def test_capacity_limits_concurrent_experiments():
    lock = threading.Lock()
    state = {"active": 0, "peak": 0}

    def slow(params):
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        time.sleep(0.05)
        with lock:
            state["active"] -= 1
        return line(params)

    lab = EmulatedLab(slow, {"y": ""}, capacity=2)
    with ThreadPoolExecutor(max_workers=6) as pool:  # more callers than instruments
        results = list(pool.map(lab.evaluate, cands(12)))
    assert len(results) == 12
    assert state["peak"] == 2


def test_latency_is_respected():
    lab = EmulatedLab(line, {"y": ""}, latency_s=0.1)
    t0 = time.perf_counter()
    r = lab.evaluate(Candidate({"x": 1.0}))
    assert time.perf_counter() - t0 >= 0.1
    assert r.metadata["seconds"] >= 0.1


def test_journal_records_started_and_finished_with_pid(tmp_path):
    journal = tmp_path / "lab.jsonl"
    lab = EmulatedLab(line, {"y": ""}, journal=journal)
    a, b = cands(2)
    lab.evaluate(a)
    lab.evaluate(b)
    lab.evaluate(a)
    events = read_journal(journal)
    assert [(e["event"], e["candidate"], e["attempt"]) for e in events] == [
        ("started", a.id, 1),
        ("finished", a.id, 1),
        ("started", b.id, 1),
        ("finished", b.id, 1),
        ("started", a.id, 2),
        ("finished", a.id, 2),
    ]
    assert {e["pid"] for e in events} == {os.getpid()}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"latency_s": -1.0}, "latency_s"),
        ({"failure_probability": 1.5}, "failure_probability"),
        ({"failure_probability": -0.1}, "failure_probability"),
        ({"invalid_probability": 2.0}, "invalid_probability"),
        ({"capacity": 0}, "capacity"),
        ({"cost_per_experiment": -1.0}, "cost_per_experiment"),
        ({"noise_sd": -0.1}, "noise_sd"),
        ({"noise_sd": {"y": -0.1}}, "noise_sd"),
        ({"latency_s": math.nan}, "latency_s"),
    ],
)
def test_bad_parameters_are_config_errors_naming_them(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        EmulatedLab(line, {"y": ""}, **kwargs)


def test_several_bad_parameters_are_all_named():
    with pytest.raises(ConfigError, match=r"\['latency_s', 'capacity'\]"):
        EmulatedLab(line, {"y": ""}, latency_s=-1, capacity=0)


def test_a_lab_needs_properties():
    with pytest.raises(ConfigError, match="at least one property"):
        EmulatedLab(line, {})


def test_broken_ground_truth_is_a_setup_error():
    def broken(params):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(OracleSetupError, match="ZeroDivisionError") as info:
        EmulatedLab(broken, {"y": ""}).evaluate(Candidate({"x": 1.0}))
    assert info.value.retryable is False


def test_ground_truth_missing_a_property_is_a_setup_error():
    with pytest.raises(OracleSetupError, match=r"\['w'\]"):
        EmulatedLab(line, {"y": "", "w": ""}).evaluate(Candidate({"x": 1.0}))


def test_setup_error_releases_the_instrument():
    lab = EmulatedLab(lambda p: {}, {"y": ""}, capacity=1)
    for _ in range(2):  # a leaked semaphore would block the second call forever
        with pytest.raises(OracleSetupError):
            lab.evaluate(Candidate({"x": 1.0}))


def test_candidates_with_non_hex_ids_get_reproducible_draws():
    # Pools of other kinds (structures, say) may name candidates "mp-149".
    c = Candidate({"x": 1.0}, id="mp-149")
    a = EmulatedLab(line, {"y": ""}, noise_sd=1.0, seed=3).evaluate(c)
    b = EmulatedLab(line, {"y": ""}, noise_sd=1.0, seed=3).evaluate(c)
    assert a.candidate_id == "mp-149"
    assert values(a) == values(b)
    assert values(a) != values(
        EmulatedLab(line, {"y": ""}, noise_sd=1.0, seed=3).evaluate(Candidate({"x": 1.0}))
    )


# --- DatasetLab -------------------------------------------------------------------------------


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "n": [6, 6, 6, 8, 8, 12],
            "gas": ["Ar", "Ar", "Ar", "N2", "N2", "Ar"],
            "y": [1.0, 2.0, 6.0, 10.0, 12.0, 5.0],
            "z": [0.0, 0.0, 3.0, 1.0, 1.0, 2.0],
        }
    )


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace([Integer("n", 6, 12), Categorical("gas", ("Ar", "N2"))])


def test_dataset_mean_mode_returns_the_replicate_mean(table, space):
    lab = DatasetLab(table, space, {"y": "J", "z": ""}, mode="mean")
    c = space.candidate({"n": 6, "gas": "Ar"})
    r = lab.evaluate(c)
    assert values(r) == {"y": pytest.approx(3.0), "z": pytest.approx(1.0)}
    assert r.metadata["replicates"] == 3
    assert r.measurements["y"].unit == "J"
    assert lab.truth(c.id) == {"y": pytest.approx(3.0), "z": pytest.approx(1.0)}
    assert len(lab.candidate_ids) == 3
    assert values(lab.evaluate(c)) == values(r)  # the mean never changes


def test_dataset_uncertainty_is_the_standard_error(table, space):
    lab = DatasetLab(table, space, {"y": "", "z": ""})
    r = lab.evaluate(space.candidate({"n": 6, "gas": "Ar"}))
    assert r.measurements["y"].uncertainty == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1) / math.sqrt(3))
    assert r.measurements["z"].uncertainty == pytest.approx(np.std([0.0, 0.0, 3.0], ddof=1) / math.sqrt(3))


def test_dataset_uncertainty_includes_extra_noise(table, space):
    lab = DatasetLab(table, space, {"y": ""}, noise_sd=0.5, seed=1)
    r = lab.evaluate(space.candidate({"n": 8, "gas": "N2"}))
    se = np.std([10.0, 12.0], ddof=1) / math.sqrt(2)
    assert r.measurements["y"].uncertainty == pytest.approx(math.hypot(se, 0.5))
    assert r.measurements["y"].value != 11.0


def test_dataset_single_replicate(table, space):
    c = space.candidate({"n": 12, "gas": "Ar"})
    r = DatasetLab(table, space, {"y": ""}).evaluate(c)
    assert r.measurements["y"].value == 5.0
    assert r.measurements["y"].uncertainty is None
    noisy = DatasetLab(table, space, {"y": ""}, noise_sd=0.5).evaluate(c)
    assert noisy.measurements["y"].uncertainty == 0.5  # the added noise is known


def test_dataset_replicate_mode_draws_a_replicate_reproducibly(table, space):
    c = space.candidate({"n": 6, "gas": "Ar"})
    lab = DatasetLab(table, space, {"y": "", "z": ""}, mode="replicate", seed=2)
    draws = [values(lab.evaluate(c)) for _ in range(30)]
    rows = {(1.0, 0.0), (2.0, 0.0), (6.0, 3.0)}
    assert {(d["y"], d["z"]) for d in draws} <= rows  # whole rows, never a mix
    assert len({d["y"] for d in draws}) > 1  # attempts draw anew
    again = DatasetLab(table, space, {"y": "", "z": ""}, mode="replicate", seed=2)
    assert [values(again.evaluate(c)) for _ in range(30)] == draws


def test_dataset_unknown_candidate_is_a_permanent_failure(table, space):
    lab = DatasetLab(table, space, {"y": ""})
    with pytest.raises(EvaluationFailed, match="not in the dataset") as info:
        lab.evaluate(space.candidate({"n": 7, "gas": "N2"}))
    assert info.value.retryable is False


def test_dataset_construction_errors(table, space):
    with pytest.raises(ConfigError, match=r"\['w'\]"):
        DatasetLab(table, space, {"w": ""})
    with pytest.raises(ConfigError, match=r"\['gas'\]"):
        DatasetLab(table.drop(columns="gas"), space, {"y": ""})
    with pytest.raises(ConfigError, match="mode"):
        DatasetLab(table, space, {"y": ""}, mode="median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="noise_sd"):
        DatasetLab(table, space, {"y": ""}, noise_sd=-1.0)


def test_dataset_groups_replicates_like_the_pool():
    # 0.1 + 0.2 and 0.3 are the same design to 12 digits.
    frame = pd.DataFrame({"x": [0.1 + 0.2, 0.3], "y": [1.0, 3.0]})
    space = SearchSpace([Continuous("x", 0.0, 1.0)])
    lab = DatasetLab(frame, space, {"y": ""})
    assert values(lab.evaluate(space.candidate({"x": 0.3}))) == {"y": 2.0}


# --- ground-truth functions ---------------------------------------------------------------------


def test_branin_minimum():
    for x1, x2 in [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)]:
        assert branin({"x1": x1, "x2": x2})["y"] == pytest.approx(0.397887, abs=1e-5)
    assert branin({"x1": 0.0, "x2": 0.0})["y"] > 1.0


def test_thin_film_optimum_region():
    best = {"x_cu": 0.55, "x_ag": 0.35, "x_au": 0.10, "anneal_c": 430.0, "anneal_min": 30, "atmosphere": "Ar"}
    out = thin_film(best)
    assert set(out) == {"conductivity", "roughness_nm"}
    worse = [
        {**best, "atmosphere": "air"},
        {**best, "anneal_c": 250.0},
        {**best, "x_cu": 0.2, "x_ag": 0.2, "x_au": 0.6},
    ]
    assert all(thin_film(p)["conductivity"] < out["conductivity"] for p in worse)
    assert thin_film({**best, "anneal_c": 500.0})["roughness_nm"] > out["roughness_nm"]


def test_resolve_function():
    assert resolve_function("branin") is branin
    assert set(FUNCTIONS) == {"branin", "branin_screen", "thin_film"}
    point = {"x1": 1.0, "x2": 2.0}
    assert resolve_function("branin_screen")(point)["y"] != branin(point)["y"]  # a biased screen
    assert resolve_function("oracles.functions:thin_film") is thin_film
    assert resolve_function("math:hypot") is math.hypot


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("rosenbrock", ["unknown function 'rosenbrock'", "branin", "thin_film", "module:callable"]),
        ("no_such_module_xyz:f", ["cannot import", "no_such_module_xyz"]),
        ("oracles.functions:nope", ["cannot import", "nope"]),
        ("math:pi", ["'math:pi' is not callable"]),
    ],
)
def test_resolve_function_errors(spec, words):
    with pytest.raises(ConfigError) as info:
        resolve_function(spec)
    for word in words:
        assert word in str(info.value)
