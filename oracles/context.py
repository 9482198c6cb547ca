"""What a plug-in builder may know of the campaign that builds it.

Builders registered for a plug-in section (``[oracle] type = "robot"``, say) are called as
``builder(options, context)``. The context is any object with the few attributes below (the
campaign configuration has them), so an adapter depends on this small protocol, never on
the orchestration layer's configuration model. A context may offer more, as an ability of its
own that a builder asks for (:class:`UniversalPotentials`), rather than a fatter protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ase.calculators.calculator import BaseCalculator


class NamedCampaign(Protocol):
    """The campaign's identity."""

    @property
    def name(self) -> str: ...


class ObjectiveUnit(Protocol):
    """An objective: the property it optimises and its unit."""

    @property
    def name(self) -> str: ...

    @property
    def unit(self) -> str: ...


class BuildContext(Protocol):
    """What a plug-in builder reads: the campaign's name, its objectives, path resolution."""

    @property
    def campaign(self) -> NamedCampaign: ...

    @property
    def objectives(self) -> Sequence[ObjectiveUnit]: ...

    def resolve(self, path: str | Path) -> Path:
        """A path from the campaign file, made absolute against the file's folder."""
        ...


@runtime_checkable
class UniversalPotentials(Protocol):
    """A context that loads universal potentials by name, for a builder that needs one (the
    DFT oracle's pre-relaxation): an adapter cannot import ``surrogates``, its sibling, so the
    composition root offers them."""

    def universal_calculator(self, name: str, device: str = "cpu", **options: Any) -> BaseCalculator:
        """An ASE calculator of the universal potential ``name``
        (:func:`surrogates.universal.universal_calculator`)."""
        ...
