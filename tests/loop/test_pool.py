"""Tests of loop.pool: finite candidate pools read from tables."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from loop.candidate import Candidate
from loop.errors import ConfigError, SpaceError
from loop.pool import CandidatePool, drop_missing_objectives, read_table
from loop.space import Categorical, Continuous, Integer, SearchSpace


@pytest.fixture
def barrels() -> pd.DataFrame:
    """A crossed-barrel-like table: 4 designs, 3 replicates each, an output column."""
    designs = [
        {"n": 6, "theta": 0.0, "r": 1.5, "t": 0.7, "material": "TPU"},
        {"n": 6, "theta": 25.0, "r": 1.5, "t": 0.7, "material": "TPU"},
        {"n": 8, "theta": 25.0, "r": 2.5, "t": 1.1, "material": "PLA"},
        {"n": 12, "theta": 200.0, "r": 2.5, "t": 1.1, "material": "PLA"},
    ]
    rows = []
    for k, d in enumerate(designs):
        for rep in range(3):
            rows.append({**d, "toughness": 10.0 * k + rep})
    return pd.DataFrame(rows)


INPUTS = ["n", "theta", "r", "t", "material"]


def test_replicates_are_grouped_into_one_candidate_each(barrels):
    pool = CandidatePool.from_frame(barrels, INPUTS)
    assert len(pool) == 4
    assert len(set(pool.ids)) == 4
    assert pool.ids == [c.id for c in pool.candidates]
    assert dict(pool.candidates[0].params) == {"n": 6, "theta": 0.0, "r": 1.5, "t": 0.7, "material": "TPU"}
    assert dict(pool.candidates[3].params)["n"] == 12  # first-seen order is kept
    assert "toughness" not in pool.space.names  # outputs never enter the pool


def test_parameter_kinds_are_read_off_the_columns(barrels):
    space = CandidatePool.from_frame(barrels, INPUTS).space
    assert space["n"] == Integer("n", 6, 12)
    assert space["theta"] == Continuous("theta", 0.0, 200.0)
    assert space["r"] == Continuous("r", 1.5, 2.5)
    assert space["material"] == Categorical("material", ("PLA", "TPU"))
    assert space.names == INPUTS


def test_x_has_one_row_per_candidate_and_matches_encode(barrels):
    pool = CandidatePool.from_frame(barrels, INPUTS)
    X = pool.X
    assert X.shape == (4, 4 + 2)  # four numeric columns, two one-hot columns
    assert X.dtype == torch.double
    assert pool.feature_names == ["n", "theta", "r", "t", "material=PLA", "material=TPU"]
    assert X[0].tolist() == [6.0, 0.0, 1.5, 0.7, 0.0, 1.0]
    assert torch.equal(pool.encode([c.params for c in pool.candidates]), X)
    assert torch.equal(pool.encode([pool.candidates[2].params]), X[2:3])
    assert pool.X is X  # built once


def test_positions_of_ids(barrels):
    pool = CandidatePool.from_frame(barrels, INPUTS)
    assert pool.positions([pool.ids[2], pool.ids[0]]).tolist() == [2, 0]
    assert pool.index[pool.ids[3]] == 3


def test_candidate_ids_agree_with_the_space(barrels):
    pool = CandidatePool.from_frame(barrels, INPUTS)
    assert pool.space.candidate(barrels.iloc[4][INPUTS].to_dict()).id == pool.ids[1]


def test_values_equal_to_12_digits_are_one_candidate():
    # 0.1 + 0.2 and 0.3 give one candidate id; they are replicates of one design.
    frame = pd.DataFrame({"x": [0.1 + 0.2, 0.3, 0.5], "y": [1.0, 2.0, 3.0]})
    pool = CandidatePool.from_frame(frame, ["x"])
    assert len(pool) == 2
    assert pool.ids[0] == Candidate({"x": 0.3}).id


def test_missing_input_column_is_a_config_error_naming_it(barrels):
    with pytest.raises(ConfigError, match=r"\['diameter'\]"):
        CandidatePool.from_frame(barrels, ["n", "diameter"])


def test_nan_inputs_are_a_space_error_naming_the_column(barrels):
    barrels.loc[4, "theta"] = float("nan")
    with pytest.raises(SpaceError, match=r"\['theta'\].*NaN"):
        CandidatePool.from_frame(barrels, INPUTS)


def test_empty_text_cell_is_a_space_error(barrels):
    barrels["material"] = barrels["material"].astype(object)
    barrels.loc[0, "material"] = None
    with pytest.raises(SpaceError, match="material"):
        CandidatePool.from_frame(barrels, INPUTS)


def test_infinite_inputs_are_a_space_error(barrels):
    barrels.loc[1, "r"] = float("inf")
    with pytest.raises(SpaceError, match=r"'r'.*infinite"):
        CandidatePool.from_frame(barrels, INPUTS)


def test_empty_and_duplicate_pools_are_refused():
    space = SearchSpace([Continuous("x", 0, 1)])
    with pytest.raises(SpaceError, match="at least one candidate"):
        CandidatePool(space, [])
    c = space.candidate({"x": 0.5})
    with pytest.raises(SpaceError, match=c.id):
        CandidatePool(space, [c, space.candidate({"x": 0.25}), c])


def test_from_csv_reads_a_real_file(tmp_path, barrels):
    path = tmp_path / "barrels.csv"
    barrels.to_csv(path, index=False)
    pool = CandidatePool.from_csv(path, INPUTS)
    assert pool.ids == CandidatePool.from_frame(barrels, INPUTS).ids
    assert isinstance(pool.space["n"], Integer)


def test_missing_file_is_a_config_error_naming_the_path(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(ConfigError, match=r"nowhere\.csv.*does not exist"):
        read_table(path)
    with pytest.raises(ConfigError, match="does not exist"):
        CandidatePool.from_csv(path, ["x"])


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00\x81\x9f binary \x00\xff", b'a,b\n"1,2\n3,4\n'],
    ids=["binary", "unterminated-quote"],
)
def test_unreadable_csv_is_a_config_error(tmp_path, content):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"bad\.csv.*not a readable CSV"):
        read_table(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"bad\.csv' is empty: no header, no rows"),
        ("\n\n", r"bad\.csv' is empty"),
        ("a,b,y\n", r"bad\.csv' has a header but no data rows"),
        (
            "0.1,2,3\n0.2,3,4\n",
            r"bad\.csv' has no header row: its first line \['0\.1', '2', '3'\] is all numbers",
        ),
        ("1,1,2\n2,3,4\n", r"no header row"),  # repeated numbers, which pandas would rename "1.1"
    ],
    ids=["empty", "blank-lines", "header-only", "headerless", "headerless-repeated"],
)
def test_tables_without_designs_are_named_as_such(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_table(path)


def test_a_header_with_some_numbers_is_a_header(tmp_path):
    path = tmp_path / "spectra.csv"
    path.write_text("sample,400,500\nA,1.0,2.0\n")
    assert list(read_table(path).columns) == ["sample", "400", "500"]


def test_rows_without_an_objective_are_dropped_with_one_warning_that_counts_them(barrels, caplog):
    barrels.loc[[1, 4], "toughness"] = float("nan")
    barrels["toughness"] = barrels["toughness"].astype(object)
    barrels.loc[7, "toughness"] = "n/a"
    with caplog.at_level(logging.WARNING, logger="alloop"):
        kept = drop_missing_objectives(barrels, ["toughness", "strength"], "barrels.csv")
    assert len(kept) == 9 and kept["toughness"].notna().all()
    assert kept["toughness"].dtype == float
    assert [r.getMessage() for r in caplog.records] == [
        "data file 'barrels.csv': dropped 3 of 12 row(s) with an empty or NaN objective ['toughness']"
    ]
    caplog.clear()
    assert drop_missing_objectives(barrels, ["toughness"], "b", warn=False).equals(kept)
    assert not caplog.records
    assert drop_missing_objectives(barrels, ["strength"], "b") is barrels  # no objective column


def test_a_table_with_no_objective_anywhere_is_refused(barrels):
    barrels["toughness"] = float("nan")
    with pytest.raises(
        ConfigError, match=r"'b\.csv': every row has an empty or NaN objective \['toughness'\]"
    ):
        drop_missing_objectives(barrels, ["toughness"], "b.csv")
