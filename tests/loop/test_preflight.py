"""Pre-flight checks: every bad input fails before the first experiment, with one line naming
the problem, and leaves no ledger behind; a safety envelope cuts the space down."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loop.build import build_oracle, build_space
from loop.campaign import Campaign
from loop.cli import app
from loop.config import load_config
from loop.errors import ConfigError, SpaceError
from loop.preflight import Limit, check_feasible, restrict_space, safety_envelope
from loop.space import Categorical, Continuous, Integer, LinearConstraint, SearchSpace
from oracles.simulated import EmulatedLab

runner = CliRunner()

BRANIN_SPACE = """
[[space.parameters]]
name = "x1"
type = "continuous"
lower = -5.0
upper = 10.0

[[space.parameters]]
name = "x2"
type = "continuous"
lower = 0.0
upper = 15.0
"""

FILM_SPACE = """
[[space.parameters]]
name = "x_cu"
type = "continuous"
lower = 0.0
upper = 1.0

[[space.parameters]]
name = "x_ag"
type = "continuous"
lower = 0.0
upper = 1.0

[[space.parameters]]
name = "anneal_c"
type = "continuous"
lower = 200.0
upper = 600.0

[[space.parameters]]
name = "anneal_min"
type = "integer"
lower = 5
upper = 60

[[space.parameters]]
name = "atmosphere"
type = "categorical"
choices = ["air", "N2", "Ar"]

[[space.constraints]]
type = "simplex"
parameters = ["x_cu", "x_ag"]
"""

BRANIN_ORACLE = """
[oracle]
type = "emulator"
function = "branin"
"""

ROBOT_ORACLE = """
[oracle]
type = "robot"
url = "http://127.0.0.1:9"

[oracle.safety]
{safety}
"""

POOL_SPACE = """
[space.pool]
path = "designs.csv"
inputs = ["a", "b"]
"""

DATASET_ORACLE = """
[oracle]
type = "dataset"
path = "designs.csv"
"""


def _write(tmp_path: Path, space: str, oracle: str, objective: str = "y") -> Path:
    """A campaign file in ``tmp_path`` whose ledger is ``tmp_path / "ledger.db"``."""
    text = f"""
[campaign]
name = "preflight"
ledger = "ledger.db"
{space}
[[objectives]]
name = "{objective}"
direction = "minimize"

[acquisition]
batch_size = 2
initial_designs = 2
num_restarts = 2
raw_samples = 32
mc_samples = 16
max_iterations = 20
{oracle}
[stopping]
max_experiments = 4
"""
    path = tmp_path / "campaign.toml"
    path.write_text(textwrap.dedent(text))
    return path


def _refused(path: Path, *fragments: str) -> str:
    """Run ``alloop run`` on ``path``; it must fail with a message holding every fragment and
    leave no ledger file."""
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in message, message
    assert not (path.parent / "ledger.db").exists()
    return message


# --- constraints ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constraints", "fragments"),
    [
        (  # a simplex total no point can reach: both fractions at most 0.3
            '[[space.constraints]]\ntype = "simplex"\nparameters = ["x1", "x2"]\ntotal = 30.0',
            ["space.constraints: constraint 1*x1 + 1*x2 == 30 cannot hold", "ranges over [-5, 25]"],
        ),
        (  # a linear constraint outside the bounds
            '[[space.constraints]]\ntype = "linear"\ncoefficients = { x1 = 1.0 }\nrhs = 12.0\nsense = ">="',
            ["constraint 1*x1 >= 12 cannot hold", "x1 in [-5, 10]"],
        ),
        (  # two constraints that contradict each other, with a third that is innocent
            '[[space.constraints]]\ntype = "linear"\ncoefficients = { x1 = 1.0, x2 = 1.0 }\nrhs = 2.0\n'
            '[[space.constraints]]\ntype = "linear"\ncoefficients = { x2 = 1.0 }\nrhs = 14.0\n'
            '[[space.constraints]]\ntype = "linear"\ncoefficients = { x1 = 1.0, x2 = 1.0 }\nrhs = 5.0\n'
            'sense = ">="',
            ["constraints 1*x1 + 1*x2 <= 2; 1*x1 + 1*x2 >= 5 contradict each other"],
        ),
    ],
    ids=["simplex-total", "outside-bounds", "contradictory"],
)
def test_infeasible_constraints_are_named_before_anything_runs(
    tmp_path: Path, constraints: str, fragments: list[str]
) -> None:
    path = _write(tmp_path, BRANIN_SPACE + constraints, BRANIN_ORACLE)
    message = _refused(path, *fragments)
    assert "x2 <= 14" not in message  # the innocent constraint is not blamed


def test_feasible_constraints_pass_even_at_the_edge() -> None:
    space = SearchSpace(
        [Continuous("a", 0.0, 0.5), Continuous("b", 0.0, 0.5)], [LinearConstraint.simplex(["a", "b"])]
    )
    check_feasible(space)  # only a = b = 0.5 is left: feasible
    with pytest.raises(ConfigError, match="somewhere: constraint"):
        check_feasible(
            SearchSpace(space.parameters, [LinearConstraint.simplex(["a", "b"], 1.5)]), "somewhere"
        )


# --- oracle contract ------------------------------------------------------------------------


def test_a_parameter_the_function_does_not_know_is_named(tmp_path: Path) -> None:
    space = BRANIN_SPACE.replace('name = "x2"', 'name = "x_2"')
    _refused(
        _write(tmp_path, space, BRANIN_ORACLE),
        "oracle.function 'branin' reads parameter(s) ['x2'] that the space does not have",
        "the space has ['x1', 'x_2']",
    )


def test_an_objective_the_function_does_not_return_is_named(tmp_path: Path) -> None:
    _refused(
        _write(tmp_path, BRANIN_SPACE, BRANIN_ORACLE, objective="z"),
        "oracle.function 'branin' does not return ['z']",
        "it returns ['y']",
    )


def test_an_extra_property_the_function_does_not_return_is_named(tmp_path: Path) -> None:
    oracle = BRANIN_ORACLE + 'properties = { roughness_nm = "nm" }\n'
    _refused(_write(tmp_path, BRANIN_SPACE, oracle), "does not return ['roughness_nm']")


def failing_truth(params: Mapping[str, Any]) -> dict[str, float]:
    """A ground truth that is broken everywhere (referred to by the campaign file below)."""
    raise ValueError("the furnace model diverges")


def test_a_function_that_fails_on_a_point_of_the_space_is_named(tmp_path: Path) -> None:
    oracle = BRANIN_ORACLE.replace('"branin"', f'"{__name__}:failing_truth"')
    _refused(
        _write(tmp_path, BRANIN_SPACE, oracle),
        f"oracle.function '{__name__}:failing_truth' fails on the trial point",
        "the furnace model diverges",
    )


def test_the_dry_call_is_not_recorded(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    config = load_config(_write(tmp_path, BRANIN_SPACE, BRANIN_ORACLE + 'journal = "journal.jsonl"\n'))
    space, _ = build_space(config)
    oracle = build_oracle(config, space)
    assert isinstance(oracle, EmulatedLab)
    assert not journal.exists()


def test_a_dataset_without_the_objective_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "designs.csv").write_text("a,b,y\n1,2,3.0\n2,3,4.0\n")
    _refused(
        _write(tmp_path, POOL_SPACE, DATASET_ORACLE, objective="strength"),
        "objective(s) ['strength'] are not columns of data file",
        "designs.csv",
        "['a', 'b', 'y']",
    )


# --- pool data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "is empty: no header, no rows"),
        ("a,b,y\n", "has a header but no data rows"),
        ("1,2,3.0\n2,3,4.0\n", "has no header row: its first line ['1', '2', '3.0'] is all numbers"),
        ("a,b,y\n1,2,\n2,3,nan\n", "every row has an empty or NaN objective ['y']"),
    ],
    ids=["empty", "header-only", "headerless", "all-nan"],
)
def test_bad_pool_tables_are_named_as_such(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "designs.csv").write_text(content)
    _refused(_write(tmp_path, POOL_SPACE, DATASET_ORACLE), "designs.csv", fragment)


def test_nan_objective_rows_are_dropped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "designs.csv").write_text("a,b,y\n1,2,3.0\n2,3,\n3,4,nan\n4,5,6.0\n4,5,n/a\n")
    config = load_config(_write(tmp_path, POOL_SPACE, DATASET_ORACLE))
    with caplog.at_level(logging.WARNING, logger="alloop"):
        space, pool = build_space(config)
        oracle = build_oracle(config, space)
    assert pool is not None and [dict(c.params) for c in pool.candidates] == [
        {"a": 1, "b": 2},
        {"a": 4, "b": 5},
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 3 of 5 row(s) with an empty or NaN objective ['y']" in warnings[0]
    # The lab answers from the rows left: (4, 5) has one replicate, not a NaN mean.
    assert oracle.evaluate(pool.candidates[1]).measurements["y"].value == 6.0  # type: ignore[attr-defined]


# --- safety envelope ------------------------------------------------------------------------


def _film_robot(tmp_path: Path, safety: str) -> Path:
    return _write(tmp_path, FILM_SPACE, ROBOT_ORACLE.format(safety=safety), "conductivity")


def test_the_envelope_cuts_the_space_down(tmp_path: Path) -> None:
    safety = "\n".join(
        [
            "anneal_c = { max = 560.0 }",
            "anneal_min = { min = 9.5, max = 30 }",
            'atmosphere = { allowed = ["N2", "Ar"] }',
        ]
    )
    space, pool = build_space(load_config(_film_robot(tmp_path, safety)))
    assert pool is None and space is not None
    assert space["anneal_c"] == Continuous("anneal_c", 200.0, 560.0)
    assert space["anneal_min"] == Integer("anneal_min", 10, 30)
    assert space["atmosphere"] == Categorical("atmosphere", ("N2", "Ar"))
    assert all(p["anneal_c"] <= 560.0 and p["atmosphere"] != "air" for p in space.sample(200, seed=1))
    assert space.constraints == (LinearConstraint.simplex(["x_cu", "x_ag"]),)
    with pytest.raises(SpaceError, match=r"anneal_c.*outside its bounds"):
        space.candidate({"x_cu": 0.5, "x_ag": 0.5, "anneal_c": 583.0, "anneal_min": 20, "atmosphere": "Ar"})


def test_a_campaign_never_proposes_outside_the_envelope(tmp_path: Path) -> None:
    config = load_config(_film_robot(tmp_path, "anneal_c = { min = 540.0 }"))
    config = config.model_copy(update={"stopping": config.stopping.model_copy(update={"max_experiments": 6})})
    lab = EmulatedLab(lambda p: {"conductivity": float(p["anneal_c"]) / 100}, {"conductivity": ""})
    campaign = Campaign(config, oracle=lab)
    try:
        campaign.run(max_cycles=3)
        evaluations = campaign.ledger.evaluations(campaign.id)
    finally:
        campaign.close()
    assert len(evaluations) == 6 and all(540.0 <= e.params["anneal_c"] <= 600.0 for e in evaluations)
    assert all(e.status == "done" for e in evaluations)


@pytest.mark.parametrize(
    ("safety", "fragments"),
    [
        ("anneal_c = { min = 650.0 }", ["oracle.safety.anneal_c: the envelope leaves nothing", "min = 650"]),
        ('atmosphere = { allowed = ["vacuum"] }', ["none of the choices ['air', 'N2', 'Ar']"]),
        (
            "x_cu = { max = 0.3 }\nx_ag = { max = 0.4 }",
            ["oracle.safety leaves no point of the space", "1*x_cu + 1*x_ag == 1 cannot hold"],
        ),
        ("temperature = { max = 500.0 }", ["oracle.safety bounds ['temperature']", "refuse every candidate"]),
        ("anneal_c = { allowed = [300.0, 400.0] }", ["a list of values cannot restrict", "'anneal_c'"]),
        ("atmosphere = { max = 3.0 }", ["'atmosphere' is categorical"]),
        ('anneal_c = { max = "hot" }', ["oracle.safety.anneal_c.max: must be a number"]),
    ],
    ids=[
        "empty-range",
        "no-choice",
        "with-constraints",
        "unknown",
        "allowed-on-range",
        "min-on-choice",
        "not-a-number",
    ],
)
def test_an_envelope_that_leaves_nothing_is_one_clear_error(
    tmp_path: Path, safety: str, fragments: list[str]
) -> None:
    _refused(_film_robot(tmp_path, safety), *fragments)


def test_the_envelope_filters_a_pool(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "designs.csv").write_text("a,b,y\n1,2,3.0\n2,3,4.0\n5,4,6.0\n")
    config = load_config(_write(tmp_path, POOL_SPACE, ROBOT_ORACLE.format(safety="a = { max = 2 }")))
    with caplog.at_level(logging.WARNING, logger="alloop"):
        _, pool = build_space(config)
    assert pool is not None and [c.params["a"] for c in pool.candidates] == [1, 2]
    assert "1 of 3 pool candidate(s) lie outside the envelope" in caplog.text
    config = load_config(_write(tmp_path, POOL_SPACE, ROBOT_ORACLE.format(safety="a = { min = 9 }")))
    with pytest.raises(ConfigError, match=r"oracle\.safety leaves none of the pool's 3 candidates"):
        build_space(config)


def test_envelope_pieces() -> None:
    assert safety_envelope({}) == {}
    assert safety_envelope({"safety": {"t": {"max": 5, "allowed": [1, 2]}}}) == {
        "t": Limit(None, 5.0, (1, 2))
    }
    space = SearchSpace([Integer("n", 1, 10)])
    assert restrict_space(space, {"n": Limit(allowed=(3, 4, 5))})["n"] == Integer("n", 3, 5)
    assert restrict_space(space, {"n": Limit(allowed=(7,))})["n"] == Integer("n", 7, 7)
    assert restrict_space(space, {}) is space
