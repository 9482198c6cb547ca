"""The committee's ASE face: a calculator of its mean energy, forces and stress, and their spread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

if TYPE_CHECKING:
    from surrogates.mlip.committee import MLIPCommittee


class CommitteeCalculator(Calculator):
    """ASE calculator: the committee's mean energy, forces and stress, and their spread.

    ``energy_std`` (eV) and ``stress_std`` (Voigt, eV/Å³) are the members' standard
    deviations; ``forces_std`` (``n``, eV/Å) is per atom, see
    :attr:`CommitteePrediction.forces_std`. ``results['committee']`` keeps the members'
    predictions.
    """

    # ASE's Calculator declares it as an instance attribute, so no ClassVar here
    implemented_properties: list[str] = [  # noqa: RUF012
        "energy",
        "free_energy",
        "forces",
        "stress",
        "energy_std",
        "forces_std",
        "stress_std",
    ]

    def __init__(self, committee: MLIPCommittee, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.committee = committee

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.atoms is None:
            raise ValueError("the committee calculator was asked without atoms")
        prediction = self.committee.predict(self.atoms)
        energy = float(prediction.energy.mean())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": prediction.forces.mean(axis=0),
            "stress": prediction.stress.mean(axis=0),
            "energy_std": float(prediction.energy.std()),
            "forces_std": prediction.forces_std,
            "stress_std": prediction.stress.std(axis=0),
            "committee": prediction,
        }
