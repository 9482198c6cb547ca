"""The compact structure form that structure candidates carry.

A crystal-structure candidate's parameters hold its whole structure as one canonical JSON
string (``structure``), beside its ``formula``, ``n_atoms`` and ``prototype``, so an oracle in
another process rebuilds the structure from the candidate alone. Vocabulary: numpy and
pymatgen only, no torch, so oracles and lab servers can import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure

from loop.errors import SpaceError

_DIGITS = 6  # decimals kept in the compact structure form (Å and fractional coordinates)


def structure_to_params(structure: Structure, prototype: str = "") -> dict[str, str | int]:
    """Candidate parameters for a structure: formula, size, prototype and the structure.

    The structure is a compact, canonical JSON string: ``lattice`` (3 x 3, Å, rows are the
    vectors), ``species`` (n symbols) and ``frac_coords`` (n x 3, in ``[0, 1)``), rounded to 6
    decimals. Canonical means that noise in the last bits (another CPU, numpy or pymatgen)
    cannot change the string, hence the candidate's id: no ``-0.0``, and a fractional
    coordinate that rounds to 1 is 0.
    """
    frac_coords = np.mod(np.round(np.mod(structure.frac_coords, 1.0), _DIGITS), 1.0)
    body = {
        "lattice": _canonical(structure.lattice.matrix).tolist(),
        "species": [site.specie.symbol for site in structure],
        "frac_coords": _canonical(frac_coords).tolist(),
    }
    return {
        "formula": structure.composition.reduced_formula,
        "n_atoms": len(structure),
        "prototype": prototype,
        "structure": json.dumps(body, separators=(",", ":")),
    }


def canonical_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with their structure in today's canonical form (see :func:`structure_to_params`).

    Ledgers written before the form was canonical hold ids that float noise made; re-encoding
    their parameters finds the pool candidate they are.

    Raises:
        SpaceError: the parameters carry no ``structure`` or it is malformed.
    """
    return {**params, **structure_to_params(structure_from_params(params), str(params.get("prototype", "")))}


def structure_from_params(params: Mapping[str, Any]) -> Structure:
    """The structure a candidate's parameters describe (see :func:`structure_to_params`).

    Raises:
        SpaceError: the parameters carry no ``structure`` or it is malformed.
    """
    if "structure" not in params:
        raise SpaceError(f"candidate parameters carry no 'structure'; keys: {sorted(params)}")
    try:
        body = json.loads(str(params["structure"]))
        return Structure(Lattice(body["lattice"]), body["species"], body["frac_coords"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SpaceError(f"candidate 'structure' is not a valid compact structure: {exc}") from exc


def _canonical(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to the form's decimals, ``-0.0`` made ``0.0``."""
    return np.round(values, _DIGITS) + 0.0
