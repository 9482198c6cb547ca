"""``[surrogate]``: a GP on a pool's features, or a MACE committee on structures.

Each key belongs to one ``type``; given with the other it is refused, naming the key. The
section is checked against the space and the objectives once the whole file is read.

A GP's recalibration defaults to ``"scale"`` on the stopping rules only (benchmarks/RESULTS.md,
the calibration addendum: the picks are those of ``"none"``, the stopping rules' 90% intervals
become calibrated). What a file names keeps the meaning it had: ``calibration`` alone applies
to all decisions, ``calibration_applies_to`` alone recalibrates by ``"scale"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from loop.config_base import Strict
from loop.config_space import ObjectiveConfig, SpaceSection

#: Universal potentials by name (:data:`surrogates.universal.KNOWN_MODELS`).
UniversalModel = Literal["chgnet", "mace-mp", "sevennet", "mattersim", "orb"]
_GP_KEYS = (
    "kernel",
    "lengthscale_prior",
    "noise",
    "warm_start",
    "descriptors",
    "prior",
    "calibration",
    "calibration_applies_to",
)
#: The keys whose defaults depend on which of them a GP's section names.
RECALIBRATION_KEYS = frozenset({"calibration", "calibration_applies_to"})
_COMMITTEE_KEYS = ("size", "mace", "baseline", "prerelax", "relax_steps", "fmax", "relax_cell", "workers")


class SurrogateSection(Strict):
    """``[surrogate]``: a GP (``type = "gp"``) on a pool's features, or a MACE committee
    (``type = "committee"``) that relaxes and scores structure candidates itself. A key of one
    type given with the other is refused, naming the key."""

    type: Literal["gp", "committee"] = "gp"
    kernel: Literal["matern52", "rbf"] = "matern52"
    lengthscale_prior: bool = True
    noise: Literal["inferred", "observed"] = "inferred"
    warm_start: bool = True
    calibration: Literal["none", "scale", "conformal"] = "none"
    """Recalibration of the predictive std from the campaign's own z-scores
    (:mod:`loop.calibration`), used by the stopping rules (and the acquisition, see
    ``calibration_applies_to``). A GP that names neither key gets ``"scale"`` on the
    stopping rules only; one that names only ``calibration_applies_to`` gets ``"scale"``."""
    calibration_applies_to: Literal["all", "stopping"] = "all"
    """Which decisions judge by the recalibrated std: ``"all"`` (the stopping rules and the
    acquisition), or ``"stopping"`` (the stopping rules only: the acquisition keeps the
    model's own std, so it picks what ``calibration = "none"`` would). ``"all"`` where only
    ``calibration`` is named, as before this key existed."""
    descriptors: Literal["pairs", "chgnet", "mace-mp", "pairs+chgnet", "pairs+mace-mp"] = "pairs"
    """Structure pools: the GP's inputs, pair features or the embedding of a universal model
    that offers one (:func:`surrogates.universal.structure_embedding`), or both side by side."""
    prior: UniversalModel | None = None
    """Structure pools: a universal potential whose formation energy of each candidate (one
    single point at its geometry as generated) is the GP's last input and its prior mean
    ``a + b E`` (Δ-learning: the kernel learns the correction to the universal potential)."""
    size: int = Field(default=4, ge=2, le=64)
    """Committee members."""
    mace: dict[str, Any] = {}  # noqa: RUF012 (a pydantic default, copied per instance)
    """A member's architecture and training (:class:`surrogates.mlip.MACESettings` keys)."""
    baseline: str | None = None
    """A universal potential the members correct: ``"chgnet"`` or an ASE calculator ``"module:Class"``."""
    prerelax: UniversalModel | None = None
    """A universal potential that relaxes candidates before the committee does."""
    relax_steps: int = Field(default=20, ge=0, le=10_000)
    """FIRE steps of each relaxation before a candidate is scored (0: scored as generated)."""
    fmax: float = Field(default=0.05, gt=0, allow_inf_nan=False)
    """Relaxations stop once every force is below this (eV/Å)."""
    relax_cell: bool = False
    """Relax the cell too, not only the positions (as the oracle's ``relax_cell``)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where universal models run (baseline, pre-relaxation, descriptors)."""
    workers: int = Field(default=2, ge=1, le=64)
    """Processes the committee's members train in."""
    _default_recalibration: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _recalibration_defaults(
        cls, data: Any, handler: ModelWrapValidatorHandler[SurrogateSection]
    ) -> SurrogateSection:
        # The defaults depend on what a GP's section names, so that a file keeps the meaning
        # it had when it was written (a committee takes neither key).
        if not isinstance(data, Mapping) or data.get("type", "gp") != "gp":
            return handler(data)
        named = RECALIBRATION_KEYS & set(data)
        if named:
            return handler({"calibration": "scale", **data} if "calibration" not in named else data)
        section = handler({**data, "calibration": "scale", "calibration_applies_to": "stopping"})
        section._default_recalibration = True
        return section

    @field_validator(*_GP_KEYS, *_COMMITTEE_KEYS)
    @classmethod
    def _applies(cls, value: Any, info: ValidationInfo) -> Any:
        owner = "gp" if info.field_name in _GP_KEYS else "committee"
        if info.data.get("type", owner) != owner:
            raise ValueError(f"applies only to type = {owner!r}")
        return value

    @field_validator("calibration_applies_to")
    @classmethod
    def _scope_of_a_recalibration(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("calibration") == "none":
            raise ValueError("applies only with calibration = 'scale' or 'conformal'")
        return value

    @model_serializer(mode="wrap")
    def _omit_default_scope(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Campaigns written before 'calibration_applies_to' existed keep their configuration hash.
        data: dict[str, Any] = handler(self)
        if data.get("calibration_applies_to") == "all":
            data.pop("calibration_applies_to", None)
        if data.get("prior") is None:  # nor before 'prior' existed
            data.pop("prior", None)
        return data

    def identity(self) -> dict[str, Any]:
        """The section as a campaign's identity records it: what it names, with the default
        recalibration recorded as ``"none"``. That recalibration serves the stopping rules
        only (which may change on resume) and leaves the picks as ``"none"`` leaves them, so
        a campaign written before it was the default keeps its hash."""
        identity = self.model_dump(mode="json")
        if self._default_recalibration:
            identity.update(calibration="none")
            identity.pop("calibration_applies_to", None)
        return identity

    @field_validator("mace")
    @classmethod
    def _mace_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value:
            from surrogates.mlip.settings import MACESettings

            known = set(MACESettings.__dataclass_fields__)
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown} (known: {sorted(known)})")
            try:
                MACESettings(**value)
            except (TypeError, ValueError) as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("baseline")
    @classmethod
    def _baseline_name(cls, value: str | None) -> str | None:
        if value is not None and value != "chgnet" and ":" not in value:
            raise ValueError(f"'chgnet' or an ASE calculator 'module:Class', got {value!r}")
        return value

    def check_space(self, space: SpaceSection, objectives: list[ObjectiveConfig]) -> None:
        """Refuse a structure surrogate where there are no structures to look at.

        Raises:
            ValueError: naming ``surrogate.type`` or ``surrogate.descriptors``.
        """
        structures = space.generator is not None and space.generator.type == "structures"
        if self.type == "committee":
            names = [o.name for o in objectives]
            if not structures:
                raise ValueError(
                    "surrogate.type: 'committee' needs a structure pool "
                    "([space.generator] type = 'structures')"
                )
            if names != ["formation_energy_per_atom"]:
                raise ValueError(
                    "surrogate.type: 'committee' predicts the one objective 'formation_energy_per_atom'; "
                    f"the objectives are {names}"
                )
        if self.descriptors != "pairs" and not structures:
            raise ValueError(
                "surrogate.descriptors: learned descriptors need a structure pool "
                "([space.generator] type = 'structures')"
            )
        if self.prior is not None and not structures:
            raise ValueError(
                "surrogate.prior: a universal potential's prior needs a structure pool "
                "([space.generator] type = 'structures')"
            )
