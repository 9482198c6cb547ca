"""Tests of loop.space: candidate ids, validation, encoding, constraints, sampling, round trips."""

from __future__ import annotations

import math

import pytest
import torch

from loop.candidate import Candidate, candidate_id
from loop.errors import SpaceError
from loop.space import Categorical, Continuous, Integer, LinearConstraint, SearchSpace


@pytest.fixture
def mixed() -> SearchSpace:
    """A thin-film-like space: a simplex of three fractions, a temperature, minutes, atmosphere."""
    return SearchSpace(
        [
            Continuous("x_cu", 0.0, 1.0),
            Continuous("x_ag", 0.0, 1.0),
            Continuous("x_au", 0.0, 1.0),
            Continuous("anneal_c", 200.0, 600.0, unit="degC"),
            Integer("anneal_min", 5, 60, unit="min"),
            Categorical("atmosphere", ("air", "N2", "Ar")),
        ],
        [LinearConstraint.simplex(["x_cu", "x_ag", "x_au"])],
    )


@pytest.fixture
def polytope() -> SearchSpace:
    """Two continuous parameters under general (non-simplex) linear constraints."""
    return SearchSpace(
        [Continuous("a", 0.0, 2.0), Continuous("b", 0.0, 2.0), Integer("k", 1, 3)],
        [
            LinearConstraint((("a", 1.0), ("b", 1.0)), 2.5, "<="),
            LinearConstraint((("a", 1.0), ("b", -1.0)), -0.5, ">="),
        ],
    )


GOOD = {"x_cu": 0.5, "x_ag": 0.3, "x_au": 0.2, "anneal_c": 400.0, "anneal_min": 30, "atmosphere": "Ar"}


# --- candidate ids ----------------------------------------------------------------------------


def test_candidate_id_is_16_hex_digits_and_stable():
    cid = candidate_id({"x": 0.3, "n": 6, "gas": "Ar"})
    assert len(cid) == 16
    int(cid, 16)  # hex
    assert cid == candidate_id({"x": 0.3, "n": 6, "gas": "Ar"})


def test_candidate_id_float_noise_below_12_digits_is_ignored():
    assert 0.1 + 0.2 != 0.3
    assert candidate_id({"x": 0.1 + 0.2}) == candidate_id({"x": 0.3})


def test_candidate_id_int_and_float_agree():
    assert candidate_id({"n": 6}) == candidate_id({"n": 6.0})


def test_candidate_id_ignores_key_order():
    assert candidate_id({"a": 1.0, "b": "x"}) == candidate_id({"b": "x", "a": 1.0})


def test_candidate_id_keeps_strings_apart_from_numbers():
    assert candidate_id({"n": "6"}) != candidate_id({"n": 6})


def test_candidate_id_distinguishes_values_and_names():
    assert candidate_id({"x": 0.3}) != candidate_id({"x": 0.3000001})
    assert candidate_id({"x": 0.3}) != candidate_id({"y": 0.3})


def test_candidate_id_negative_zero_equals_zero():
    # -0.0 == 0.0 numerically (an optimiser or a clamp can produce either); one candidate, one id.
    assert candidate_id({"x": -0.0}) == candidate_id({"x": 0.0})


def test_candidate_gets_id_from_params_and_is_read_only():
    c = Candidate({"x": 0.3})
    assert c.id == candidate_id({"x": 0.3})
    with pytest.raises(TypeError):
        c.params["x"] = 1.0  # type: ignore[index]


def test_candidate_dict_round_trip_keeps_explicit_id():
    c = Candidate({"x": 0.25, "gas": "Ar"}, id="mp-149")
    back = Candidate.from_dict(c.as_dict())
    assert back == c
    assert back.id == "mp-149"
    assert dict(back.params) == {"x": 0.25, "gas": "Ar"}


def test_space_candidate_ids_agree_across_equivalent_inputs(mixed):
    a = mixed.candidate(GOOD)
    b = mixed.candidate({**GOOD, "anneal_min": 30.0, "x_cu": 0.1 + 0.4, "anneal_c": "400"})
    reordered = mixed.candidate(dict(reversed(list(GOOD.items()))))
    assert a.id == b.id == reordered.id
    assert isinstance(b.params["anneal_min"], int)
    assert b.params["anneal_c"] == 400.0


# --- canonical: every bad input names the parameter ------------------------------------------


def test_canonical_returns_typed_values(mixed):
    canonical = mixed.canonical({**GOOD, "anneal_min": 30.0})
    assert canonical == GOOD
    assert type(canonical["anneal_min"]) is int
    assert type(canonical["anneal_c"]) is float


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"pressure": 1.0}, ["unknown", "pressure"]),
        ({"anneal_c": 700.0}, ["anneal_c", "outside its bounds"]),
        ({"anneal_c": 199.0}, ["anneal_c", "outside its bounds"]),
        ({"anneal_min": 61}, ["anneal_min", "outside its bounds"]),
        ({"anneal_min": 30.5}, ["anneal_min", "must be an integer"]),
        ({"atmosphere": "He"}, ["atmosphere", "must be one of", "He"]),
        ({"anneal_c": math.nan}, ["anneal_c", "finite"]),
        ({"anneal_c": math.inf}, ["anneal_c", "finite"]),
        ({"anneal_c": "hot"}, ["anneal_c", "must be a number"]),
        ({"anneal_c": None}, ["anneal_c", "must be a number"]),
        ({"x_cu": 0.6}, ["constraint", "x_cu", "violated"]),
    ],
)
def test_canonical_errors_name_the_problem(mixed, change, words):
    params = {**GOOD, **change}
    with pytest.raises(SpaceError) as info:
        mixed.canonical(params)
    for word in words:
        assert word in str(info.value)
    assert params == {**GOOD, **change}  # the caller's dictionary is left alone


def test_canonical_missing_parameter_is_named(mixed):
    params = {k: v for k, v in GOOD.items() if k != "anneal_min"}
    with pytest.raises(SpaceError, match=r"missing parameter\(s\) \['anneal_min'\]"):
        mixed.canonical(params)


def test_canonical_accepts_tiny_constraint_slack_but_not_more(mixed):
    mixed.canonical({**GOOD, "x_cu": 0.5 + 5e-7})
    with pytest.raises(SpaceError, match="violated"):
        mixed.canonical({**GOOD, "x_cu": 0.5 + 1e-5})


def test_spaceerror_is_a_valueerror(mixed):
    with pytest.raises(ValueError):
        mixed.canonical({**GOOD, "atmosphere": "vacuum"})


# --- invalid spaces ---------------------------------------------------------------------------


def test_duplicate_names_are_refused():
    with pytest.raises(SpaceError, match=r"unique.*\['x'\]"):
        SearchSpace([Continuous("x", 0, 1), Integer("x", 0, 3)])


def test_empty_space_is_refused():
    with pytest.raises(SpaceError, match="at least one parameter"):
        SearchSpace([])


@pytest.mark.parametrize(
    "make",
    [
        lambda: Continuous("t", 2.0, 1.0),
        lambda: Integer("t", 5, 1),
        lambda: Continuous("t", 0.0, math.inf),
        lambda: Continuous("t", math.nan, 1.0),
    ],
)
def test_bad_bounds_are_refused_naming_the_parameter(make):
    with pytest.raises(SpaceError, match=r"'t'.*bounds"):
        make()


def test_categorical_needs_distinct_choices():
    with pytest.raises(SpaceError, match=r"'gas'.*distinct"):
        Categorical("gas", ("Ar", "Ar"))
    with pytest.raises(SpaceError, match="'gas'"):
        Categorical("gas", ())


def test_constraint_on_categorical_or_unknown_parameter_is_refused():
    with pytest.raises(SpaceError, match=r"'gas'.*not a continuous"):
        SearchSpace(
            [Continuous("x", 0, 1), Categorical("gas", ("Ar", "N2"))],
            [LinearConstraint((("x", 1.0), ("gas", 1.0)), 1.0, "<=")],
        )
    with pytest.raises(SpaceError, match="'y'"):
        SearchSpace([Continuous("x", 0, 1)], [LinearConstraint.simplex(["x", "y"])])


def test_constraint_on_integer_is_refused():
    with pytest.raises(SpaceError, match="'n'"):
        SearchSpace([Integer("n", 0, 3)], [LinearConstraint((("n", 1.0),), 2.0)])


def test_linear_constraint_validation():
    with pytest.raises(SpaceError, match="at least one coefficient"):
        LinearConstraint((), 1.0)
    with pytest.raises(SpaceError, match="sense"):
        LinearConstraint((("x", 1.0),), 1.0, "<")  # type: ignore[arg-type]


def test_linear_constraint_violation_per_sense():
    params = {"a": 1.0, "b": 2.0}
    terms = (("a", 1.0), ("b", 1.0))
    assert LinearConstraint(terms, 2.5, "<=").violation(params) == pytest.approx(0.5)
    assert LinearConstraint(terms, 3.5, "<=").violation(params) == 0.0
    assert LinearConstraint(terms, 3.5, ">=").violation(params) == pytest.approx(0.5)
    assert LinearConstraint(terms, 2.5, ">=").violation(params) == 0.0
    assert LinearConstraint(terms, 2.0, "==").violation(params) == pytest.approx(1.0)
    assert str(LinearConstraint(terms, 2.5, "<=")) == "1*a + 1*b <= 2.5"


# --- encoding ---------------------------------------------------------------------------------


def test_feature_names_columns_and_dim(mixed):
    assert mixed.dim == 8
    assert mixed.feature_names == [
        "x_cu",
        "x_ag",
        "x_au",
        "anneal_c",
        "anneal_min",
        "atmosphere=air",
        "atmosphere=N2",
        "atmosphere=Ar",
    ]
    assert list(mixed.columns("atmosphere")) == [5, 6, 7]
    assert list(mixed.columns("anneal_c")) == [3]
    assert mixed.names == ["x_cu", "x_ag", "x_au", "anneal_c", "anneal_min", "atmosphere"]
    assert mixed["anneal_min"] == Integer("anneal_min", 5, 60, unit="min")


def test_bounds_are_2_by_d(mixed):
    bounds = mixed.bounds
    assert bounds.shape == (2, mixed.dim)
    assert bounds.dtype == torch.double
    assert bounds.tolist() == [
        [0.0, 0.0, 0.0, 200.0, 5.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 600.0, 60.0, 1.0, 1.0, 1.0],
    ]


def test_encode_one_hot_and_order(mixed):
    X = mixed.encode([GOOD, {**GOOD, "atmosphere": "air", "anneal_min": 5}])
    assert X.shape == (2, 8)
    assert X.dtype == torch.double
    assert X[0].tolist() == [0.5, 0.3, 0.2, 400.0, 30.0, 0.0, 0.0, 1.0]
    assert X[1, 4:].tolist() == [5.0, 1.0, 0.0, 0.0]


def test_encode_empty_gives_0_by_d(mixed):
    assert mixed.encode([]).shape == (0, mixed.dim)


def test_encode_decode_round_trip(mixed):
    samples = mixed.sample(20, seed=3)
    back = mixed.decode(mixed.encode(samples))
    assert [mixed.candidate(b).id for b in back] == [mixed.candidate(s).id for s in samples]
    for b, s in zip(back, samples, strict=True):
        assert b["atmosphere"] == s["atmosphere"]
        assert b["anneal_min"] == s["anneal_min"]
        assert b["x_cu"] == pytest.approx(s["x_cu"], abs=1e-12)


def test_decode_rounds_integers_clamps_and_takes_argmax_of_categoricals(mixed):
    X = torch.tensor(
        [
            [0.5, 0.3, 0.2, 650.0, 29.6, 0.2, 0.7, 0.1],
            [-0.1, 0.3, 0.2, 100.0, 70.2, 0.9, 0.0, 0.3],
        ],
        dtype=torch.double,
    )
    first, second = mixed.decode(X)
    assert first["anneal_min"] == 30 and type(first["anneal_min"]) is int
    assert first["anneal_c"] == 600.0  # clamped to the upper bound
    assert first["atmosphere"] == "N2"
    assert second["x_cu"] == 0.0
    assert second["anneal_c"] == 200.0
    assert second["anneal_min"] == 60
    assert second["atmosphere"] == "air"


# --- BoTorch constraints ----------------------------------------------------------------------


def _holds(constraint: tuple[torch.Tensor, torch.Tensor, float], X: torch.Tensor, equality: bool) -> bool:
    index, coeffs, rhs = constraint
    lhs = (X[:, index] * coeffs).sum(-1)
    return (
        bool(torch.allclose(lhs, torch.full_like(lhs, rhs), atol=1e-9))
        if equality
        else bool((lhs >= rhs - 1e-9).all())
    )


def test_botorch_constraints_sign_conventions(polytope):
    inequality, equality = polytope.botorch_constraints()
    assert equality == []
    assert len(inequality) == 2
    (i0, c0, r0), (i1, c1, r1) = inequality
    assert i0.tolist() == [0, 1] and c0.tolist() == [-1.0, -1.0] and r0 == -2.5  # "<=" flipped
    assert i1.tolist() == [0, 1] and c1.tolist() == [1.0, -1.0] and r1 == -0.5  # ">=" kept
    assert i0.dtype == torch.long and c0.dtype == torch.double
    feasible = polytope.encode([{"a": 0.5, "b": 0.8, "k": 1}, {"a": 1.2, "b": 1.3, "k": 3}])
    assert all(_holds(c, feasible, equality=False) for c in inequality)
    infeasible = polytope.encode([{"a": 1.5, "b": 1.5, "k": 1}])  # a + b = 3 > 2.5
    assert not _holds(inequality[0], infeasible, equality=False)
    infeasible = polytope.encode([{"a": 0.0, "b": 1.0, "k": 1}])  # a - b = -1 < -0.5
    assert not _holds(inequality[1], infeasible, equality=False)


def test_botorch_equality_constraint_of_a_simplex(mixed):
    inequality, equality = mixed.botorch_constraints()
    assert inequality == []
    ((index, coeffs, rhs),) = equality
    assert index.tolist() == [0, 1, 2] and coeffs.tolist() == [1.0, 1.0, 1.0] and rhs == 1.0
    assert _holds(equality[0], mixed.encode(mixed.sample(10, seed=0)), equality=True)


# --- sampling ---------------------------------------------------------------------------------


def test_sample_simplex_path_is_feasible_and_reproducible(mixed):
    samples = mixed.sample(200, seed=11)
    assert len(samples) == 200
    for s in samples:
        mixed.canonical(s)  # within bounds, integers integral, categories known, simplex holds
        assert s["x_cu"] + s["x_ag"] + s["x_au"] == pytest.approx(1.0, abs=1e-9)
    assert {s["atmosphere"] for s in samples} == {"air", "N2", "Ar"}
    assert {type(s["anneal_min"]) for s in samples} == {int}
    assert min(s["anneal_min"] for s in samples) >= 5 and max(s["anneal_min"] for s in samples) <= 60
    assert mixed.sample(200, seed=11) == samples
    assert mixed.sample(200, seed=12) != samples


def test_sample_simplex_with_a_total_other_than_one():
    space = SearchSpace(
        [Continuous("a", 0, 5), Continuous("b", 0, 5)], [LinearConstraint.simplex(["a", "b"], 2.0)]
    )
    for s in space.sample(50, seed=0):
        assert s["a"] + s["b"] == pytest.approx(2.0)
        space.canonical(s)


def test_sample_polytope_path_respects_general_constraints(polytope):
    samples = polytope.sample(40, seed=5)
    assert len(samples) == 40
    for s in samples:
        polytope.canonical(s)
        assert s["a"] + s["b"] <= 2.5 + 1e-6
        assert s["a"] - s["b"] >= -0.5 - 1e-6
    assert polytope.sample(40, seed=5) == samples
    assert polytope.sample(40, seed=6) != samples


def test_sample_bounded_simplex_uses_polytope_and_stays_feasible():
    # x_a has an upper bound below the total, so Dirichlet sampling would not cover it exactly.
    space = SearchSpace(
        [Continuous("x_a", 0.0, 0.5), Continuous("x_b", 0.0, 1.0), Continuous("x_c", 0.0, 1.0)],
        [LinearConstraint.simplex(["x_a", "x_b", "x_c"])],
    )
    for s in space.sample(30, seed=2):
        space.canonical(s)
        assert s["x_a"] <= 0.5


def test_sample_free_space_is_uniform_in_bounds():
    space = SearchSpace([Continuous("t", -2.0, 3.0), Integer("n", 0, 1), Categorical("g", ("a",))])
    samples = space.sample(300, seed=1)
    ts = [s["t"] for s in samples]
    assert min(ts) >= -2.0 and max(ts) <= 3.0
    assert sum(ts) / len(ts) == pytest.approx(0.5, abs=0.3)
    assert {s["n"] for s in samples} == {0, 1}
    assert {s["g"] for s in samples} == {"a"}


# --- round trip and equality ------------------------------------------------------------------


def test_as_dict_from_dict_round_trip(mixed, polytope):
    for space in (mixed, polytope):
        d = space.as_dict()
        back = SearchSpace.from_dict(d)
        assert back == space
        assert back.as_dict() == d
        assert back.names == space.names
        assert back.constraints == space.constraints
        assert back.parameters == space.parameters
    assert mixed.as_dict()["parameters"][5] == {
        "name": "atmosphere",
        "type": "categorical",
        "unit": "",
        "choices": ["air", "N2", "Ar"],
    }


def test_equal_spaces_hash_equal():
    a = SearchSpace([Continuous("x", 0, 1)])
    b = SearchSpace([Continuous("x", 0.0, 1.0)])
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_different_spaces_are_unequal(mixed):
    other = SearchSpace(list(mixed.parameters))  # same parameters, no simplex
    assert other != mixed
    assert mixed != "not a space"
    assert "x_cu" in repr(mixed) and "==" in repr(mixed)
