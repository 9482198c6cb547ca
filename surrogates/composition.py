"""Atomic fractions as leading model inputs of the learned featurizers.

The hull-aware acquisitions (:mod:`loop.hull_acquisition`) read each candidate's composition
from ``x_<element>`` input columns, the coordinates of the convex hull. The pair featurizer has
them; the featurizers of learned models (a universal model's embedding, the committee's
structure keys) put them first so the same acquisitions work on every surrogate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymatgen.core import Structure


def fraction_names(elements: Sequence[str]) -> list[str]:
    """``x_<element>`` for each element, in the given order: the one name of a composition
    column, for every featurizer and the hull-aware acquisitions."""
    return [f"x_{el}" for el in elements]


def atomic_fractions(structures: Sequence[Structure], elements: Sequence[str]) -> np.ndarray:
    """``n x e`` atomic fractions of ``elements`` in each structure.

    Raises:
        ValueError: a structure holds an element outside ``elements``.
    """
    rows = np.zeros((len(structures), len(elements)))
    for i, structure in enumerate(structures):
        composition = structure.composition.fractional_composition
        outside = {el.symbol for el in composition.elements} - set(elements)
        if outside:
            raise ValueError(
                f"structure holds {sorted(outside)}, outside the chemical system {list(elements)}"
            )
        rows[i] = [composition[el] for el in elements]
    return rows
