"""Finite candidate pools: a table of designs to choose from.

A pool is read from a CSV file or a DataFrame. Rows with identical inputs are replicates of
one design and become one candidate; the outputs, if the table has them, stay with the
dataset-backed simulated lab (:mod:`oracles.simulated`), never with the pool.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from loop.candidate import Candidate, ParamValue
from loop.errors import ConfigError, SpaceError
from loop.space import Categorical, Continuous, Integer, Parameter, SearchSpace

log = logging.getLogger("alloop.pool")


class Pool(Protocol):
    """What a campaign needs of a finite set of candidates."""

    ids: list[str]
    candidates: tuple[Candidate, ...]

    def __len__(self) -> int: ...

    @property
    def X(self) -> Tensor:
        """``N x d`` model inputs of every candidate, in order."""
        ...

    @property
    def feature_names(self) -> list[str]: ...

    def encode(self, params: Iterable[Mapping[str, Any]]) -> Tensor:
        """``n x d`` model inputs of candidates given by their parameters."""
        ...

    def row_of(self, candidate: Candidate) -> int | None:
        """The row of a candidate the ledger holds, or ``None`` if the pool lacks it."""
        ...


def free_rows(pool: Pool, taken: Iterable[Candidate]) -> list[int]:
    """Rows of the pool's candidates that are not among ``taken`` (those the ledger holds)."""
    rows = {pool.row_of(c) for c in taken}
    return [i for i in range(len(pool)) if i not in rows]


class CandidatePool:
    """A finite, ordered set of distinct candidates of one search space.

    What a campaign needs of a pool is ``ids``, ``candidates``, ``X`` (the model inputs of
    every candidate, ``N x d``) and :meth:`encode`; pools of other kinds of candidate
    (crystal structures, say) provide the same and plug in unchanged.

    Args:
        space: The space the candidates belong to.
        candidates: The candidates; ids must be distinct.
    """

    def __init__(self, space: SearchSpace, candidates: Sequence[Candidate]) -> None:
        if not candidates:
            raise SpaceError("a candidate pool needs at least one candidate")
        self.space = space
        self.candidates: tuple[Candidate, ...] = tuple(candidates)
        self.ids: list[str] = [c.id for c in self.candidates]
        self.index: dict[str, int] = {cid: i for i, cid in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            repeated = sorted(cid for cid, n in Counter(self.ids).items() if n > 1)
            raise SpaceError(f"duplicate candidate ids in pool: {repeated[:5]}")
        self._X: Tensor | None = None

    def __len__(self) -> int:
        return len(self.candidates)

    def row_of(self, candidate: Candidate) -> int | None:
        return self.index.get(candidate.id)

    @property
    def X(self) -> Tensor:
        """``N x d`` encoded candidates, built once."""
        if self._X is None:
            self._X = self.space.encode(c.params for c in self.candidates)
        return self._X

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, inputs: Sequence[str]) -> CandidatePool:
        """A pool from the ``inputs`` columns of a table, replicates grouped.

        Parameter kinds are read off the column types: integer columns become
        :class:`Integer`, other numeric ones :class:`Continuous` (bounds = the column's range),
        text columns :class:`Categorical`.
        """
        missing = [c for c in inputs if c not in frame.columns]
        if missing:
            raise ConfigError(f"input column(s) {missing} not in table columns {list(frame.columns)}")
        table = frame[list(inputs)]
        if table.isna().any().any():
            bad = [c for c in inputs if table[c].isna().any()]
            raise SpaceError(f"input column(s) {bad} have empty or NaN cells")
        params: list[Parameter] = []
        for name in inputs:
            column = table[name]
            if pd.api.types.is_integer_dtype(column):
                params.append(Integer(name, int(column.min()), int(column.max())))
            elif pd.api.types.is_numeric_dtype(column):
                values = column.to_numpy(dtype=float)
                if not np.isfinite(values).all():
                    raise SpaceError(f"input column {name!r} has infinite values")
                params.append(Continuous(name, float(values.min()), float(values.max())))
            else:
                params.append(Categorical(name, tuple(sorted(column.astype(str).unique()))))
        space = SearchSpace(params)
        # Replicates are rows with the same candidate id (numbers equal to 12 significant
        # digits), as the dataset-backed lab groups them; exact duplicates are dropped first.
        candidates: dict[str, Candidate] = {}
        for row in table.drop_duplicates().to_dict("records"):
            candidate = space.candidate(row)
            candidates.setdefault(candidate.id, candidate)
        return cls(space, list(candidates.values()))

    @classmethod
    def from_csv(cls, path: str | Path, inputs: Sequence[str]) -> CandidatePool:
        """A pool from a CSV file; see :meth:`from_frame`."""
        return cls.from_frame(read_table(path), inputs)

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``d`` model-input columns."""
        return self.space.feature_names

    def encode(self, params: Iterable[Mapping[str, ParamValue]]) -> Tensor:
        """``n x d`` model inputs of candidates given by their parameters."""
        return self.space.encode(params)

    def positions(self, ids: Sequence[str]) -> Tensor:
        """Row positions of ``ids`` in the pool (a ``len(ids)`` long tensor)."""
        return torch.tensor([self.index[i] for i in ids], dtype=torch.long)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV table of designs, one row each under a header line of column names.

    Raises:
        ConfigError: naming the file, when it is missing, unreadable, empty, has a header but
            no rows, or has no header (its first line, taken as column names, is all numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {str(path)!r} does not exist")
    try:
        table = pd.read_csv(path)
        first_line = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].tolist()
    except pd.errors.EmptyDataError:
        raise ConfigError(f"data file {str(path)!r} is empty: no header, no rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data file {str(path)!r} is not a readable CSV table: {exc}") from exc
    if all(_is_number(cell) for cell in first_line):
        raise ConfigError(
            f"data file {str(path)!r} has no header row: its first line {first_line} is all numbers; "
            "add a first line of column names"
        )
    if table.empty:
        raise ConfigError(f"data file {str(path)!r} has a header but no data rows")
    return table


def drop_missing_objectives(
    table: pd.DataFrame, objectives: Sequence[str], source: str, warn: bool = True
) -> pd.DataFrame:
    """``table`` without the rows whose objective is empty, NaN or not a number.

    Such rows would be proposed and spend budget on a measurement that is not there. Only the
    objective columns the table has count (a pool's table may hold inputs alone); those become
    numeric.

    Args:
        table: One row per design or measurement.
        objectives: The campaign's objective names.
        source: What the table is, for the messages (its file).
        warn: Log one warning that counts the dropped rows.

    Raises:
        ConfigError: every row lacks an objective.
    """
    present = [name for name in objectives if name in table.columns]
    if not present:
        return table
    values = table[present].apply(pd.to_numeric, errors="coerce")
    missing = values.isna().any(axis=1)
    if missing.all():
        raise ConfigError(f"data file {source!r}: every row has an empty or NaN objective {present}")
    if missing.any() and warn:
        log.warning(
            "data file %r: dropped %d of %d row(s) with an empty or NaN objective %s",
            source,
            int(missing.sum()),
            len(table),
            present,
        )
    return table.assign(**{name: values[name] for name in present})[~missing].reset_index(drop=True)


def _is_number(cell: Any) -> bool:
    try:
        float(cell)
    except (TypeError, ValueError):
        return False
    return True
