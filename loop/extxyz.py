"""Export labelled structures as extended XYZ, the format MLIP codes read directly.

Each done evaluation with a labelled frame (:class:`loop.frame.Frame`, the DFT runner's) becomes
one structure: the relaxed cell and positions, ``energy`` (eV), ``forces`` (eV/Å) and ``stress``
(eV/Å³) frozen on with ASE's ``SinglePointCalculator``, and in ``info`` the candidate id, formula
and the measured properties (``formation_energy_per_atom``...).
"""

from __future__ import annotations

from pathlib import Path

from ase import Atoms

from loop.errors import LedgerError
from loop.ledger import Ledger


def labelled_structures(ledger: Ledger, campaign_name: str | None = None) -> list[Atoms]:
    """The labelled structures of a campaign's done evaluations, in evaluation order."""
    campaign = ledger.campaign(campaign_name)
    frames = []
    for record in ledger.evaluations(int(campaign["id"]), ["done"]):
        if record.frame is None:
            continue
        atoms = record.frame.atoms()
        atoms.info.update(
            {"candidate_id": record.candidate_id, "formula": atoms.get_chemical_formula(mode="metal")}
        )
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
