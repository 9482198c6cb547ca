"""Export labelled structures as extended XYZ, the format MLIP codes read directly.

Each done evaluation whose metadata carries a final structure (the DFT runner's) becomes one
frame: the relaxed cell and positions, ``energy`` (eV), ``forces`` (eV/Å) and ``stress``
(eV/Å³) frozen on with ASE's ``SinglePointCalculator``, and in ``info`` the candidate id,
formula and the measured properties (``formation_energy_per_atom``...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from loop.errors import LedgerError
from loop.ledger import Ledger


def labelled_structures(ledger: Ledger, campaign_name: str | None = None) -> list[Atoms]:
    """The labelled structures of a campaign's done evaluations, in evaluation order."""
    campaign = ledger.campaign(campaign_name)
    frames = []
    for record in ledger.evaluations(int(campaign["id"]), ["done"]):
        meta = record.metadata
        structure = meta.get("structure")
        if not structure or "energy_ev" not in meta:
            continue
        atoms = Atoms(
            symbols=structure["symbols"],
            positions=structure["positions"],
            cell=structure["cell"],
            pbc=structure["pbc"],
        )
        stress = meta.get("stress_ev_per_a3")
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=float(meta["energy_ev"]),
            forces=np.array(meta["forces_ev_per_a"], dtype=float),
            **({"stress": np.array(stress, dtype=float)} if stress is not None else {}),
        )
        atoms.info.update({"candidate_id": record.candidate_id, "formula": meta.get("formula", "")})
        atoms.info.update({name: float(value) for name, value in record.values.items()})
        frames.append(atoms)
    return frames


def write_extxyz(ledger: Ledger, campaign_name: str | None, path: str | Path) -> int:
    """Write a campaign's labelled structures to ``path`` (extended XYZ); returns the count.

    Raises:
        LedgerError: the campaign has no done evaluation with a structure to export.
    """
    from ase.io import write

    frames = labelled_structures(ledger, campaign_name)
    if not frames:
        raise LedgerError(
            f"campaign {campaign_name or '(the only one)'} has no done evaluation with a structure "
            "to export (extxyz needs an oracle that records structures, such as type = 'dft')"
        )
    write(str(path), frames, format="extxyz")
    return len(frames)
