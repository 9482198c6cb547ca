"""Hull-aware acquisition on a hand-made binary hull, with a model whose posterior is known."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from botorch.acquisition import qProbabilityOfImprovement, qUpperConfidenceBound
from botorch.posteriors.gpytorch import GPyTorchPosterior
from botorch.utils.datasets import SupervisedDataset
from gpytorch.distributions import MultivariateNormal
from torch import Tensor

from loop.acquisition import Acquisition
from loop.build import build_acquisition
from loop.config import load_config
from loop.errors import CampaignError, ConfigError
from loop.featurize import StructureFeaturizer
from loop.hull_acquisition import AnalyticHullAcquisition, HullTarget
from surrogates.base import Surrogate
from surrogates.ensemble_posterior import MemberPosterior

# Inputs: x_A, x_B (atomic fractions), then the posterior the model reads off each row:
# mean and std of formation energy (eV/atom), and a group (rows of one group move together).
FEATURES = ["x_A", "x_B", "mean", "std", "group"]
TARGET = HullTarget.from_feature_names(["A", "B"], FEATURES)


class TableModel(Surrogate):
    """Posterior N(mean, std²) read off the inputs; perfectly correlated within a group."""

    num_outputs = 1

    def fit(self, dataset: SupervisedDataset) -> TableModel:
        return self

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def posterior(self, X: Tensor, *args: Any, **kwargs: Any) -> GPyTorchPosterior:
        mean, std, group = X[..., 2], X[..., 3], X[..., 4]
        same = (group.unsqueeze(-1) == group.unsqueeze(-2)).to(X)
        covariance = std.unsqueeze(-1) * std.unsqueeze(-2) * same
        eye = torch.eye(X.shape[-2], dtype=X.dtype)
        posterior = GPyTorchPosterior(MultivariateNormal(mean, covariance + 1e-12 * eye))
        transform = kwargs.get("posterior_transform")
        return posterior if transform is None else transform(posterior)


def row(x_b: float, mean: float, std: float, group: int) -> list[float]:
    return [1.0 - x_b, x_b, mean, std, float(group)]


# Evaluated: A and B at 0, AB at -0.10 (on the hull), A3B at -0.04 (10 meV/atom above it).
# Hull: E_hull(x_B) = -0.2 x_B up to x_B = 1/2, -0.2 (1 - x_B) beyond.
X_DONE = torch.tensor(
    [row(0.0, 0, 1, 90), row(1.0, 0, 1, 91), row(0.5, 0, 1, 92), row(0.25, 0, 1, 93)], dtype=torch.double
)
Y_DONE = torch.tensor([[0.0], [0.0], [-0.10], [-0.04]], dtype=torch.double)


def hull_at(x_b: float) -> float:
    return -0.2 * min(x_b, 1.0 - x_b)


CANDIDATES = [  # x_B, mean, std
    (0.25, -0.060, 0.010),  # 10 meV/atom below the hull at its composition: P = Φ(1)
    (0.50, -0.090, 0.020),  # P = Φ(-0.5)
    (0.75, +0.500, 0.010),  # far above the hull: P ~ 0
    (1 / 3, -0.070, 0.030),  # P = Φ(0.111)
    (0.60, -0.075, 0.005),  # P = Φ(-1)
]
CHOICES = torch.tensor([row(x, m, s, i) for i, (x, m, s) in enumerate(CANDIDATES)], dtype=torch.double)


def phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def closed_form_probability(within_mev: float) -> list[float]:
    return [phi((hull_at(x) + within_mev / 1000 - m) / s) for x, m, s in CANDIDATES]


def acquisition(kind: str, within_mev: float = 0.0, **kwargs: Any) -> Acquisition:
    target = HullTarget.from_feature_names(["A", "B"], FEATURES, within_mev)
    return Acquisition(kind, [-1.0], hull=target, **kwargs)  # type: ignore[arg-type]


def test_the_current_hull_is_that_of_the_evaluated_structures() -> None:
    hull = TARGET.hull(X_DONE, Y_DONE[:, 0])
    assert hull(CHOICES).tolist() == pytest.approx([hull_at(x) for x, _, _ in CANDIDATES], abs=1e-12)
    assert TARGET.hull(None, None)(CHOICES).tolist() == pytest.approx([0.0] * len(CANDIDATES))


@pytest.mark.parametrize("within_mev", [0.0, 5.0])
def test_hull_probability_is_the_closed_form(within_mev: float) -> None:
    acqf = acquisition("hull_probability", within_mev).build(TableModel(), X_DONE, Y_DONE, None, 1)
    assert isinstance(acqf, AnalyticHullAcquisition)
    values = acqf(CHOICES.unsqueeze(-2)).tolist()
    assert values == pytest.approx(closed_form_probability(within_mev), abs=1e-7)
    assert values[2] < 1e-12  # far above the hull


@pytest.mark.parametrize("beta", [0.0, 4.0])
def test_hull_lcb_is_minus_the_lower_bound_of_the_height_above_the_hull(beta: float) -> None:
    acqf = acquisition("hull_lcb", beta=beta).build(TableModel(), X_DONE, Y_DONE, None, 1)
    expected = [hull_at(x) - (m - math.sqrt(beta) * s) for x, m, s in CANDIDATES]
    assert acqf(CHOICES.unsqueeze(-2)).tolist() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize(("kind", "best"), [("hull_probability", 0), ("hull_lcb", 3)])
def test_single_pool_pick_is_the_best_closed_form(kind: str, best: int) -> None:
    (pick,) = acquisition(kind).select_from_pool(TableModel(), CHOICES, 1, X_DONE, Y_DONE, None, seed=0)
    assert pick.index == best
    if kind == "hull_probability":
        assert pick.value == pytest.approx(phi(1.0))


def test_batch_of_two_picks_the_two_most_probable() -> None:
    picks = acquisition("hull_probability", mc_samples=512).select_from_pool(
        TableModel(), CHOICES, 2, X_DONE, Y_DONE, None, seed=0
    )
    assert [p.index for p in picks] == [0, 3]
    p0, p3 = closed_form_probability(0.0)[0], closed_form_probability(0.0)[3]
    # The batch's value: the probability that at least one of the two lands on the hull.
    assert picks[-1].value == pytest.approx(1 - (1 - p0) * (1 - p3), abs=0.03)


def test_pending_points_are_valued_jointly() -> None:
    # A twin of candidate 0 (same composition and posterior, perfectly correlated with it) is
    # pending: candidate 0 can add nothing to it, so the pick moves to the next best.
    twin = CHOICES[:1].clone()
    twin[0, 4] = 0.0
    hull_probability = acquisition("hull_probability", mc_samples=1024)
    acqf = hull_probability.build(TableModel(), X_DONE, Y_DONE, twin, 1)
    assert isinstance(acqf, qProbabilityOfImprovement)
    p = closed_form_probability(0.0)
    values = acqf(CHOICES.unsqueeze(-2)).tolist()
    assert values[0] == pytest.approx(p[0], abs=0.03)  # nothing added to the twin
    assert values[3] == pytest.approx(1 - (1 - p[0]) * (1 - p[3]), abs=0.03)  # independent
    (pick,) = hull_probability.select_from_pool(TableModel(), CHOICES, 1, X_DONE, Y_DONE, twin, seed=0)
    assert pick.index == 3


def test_batched_hull_lcb_is_botorch_qucb_on_the_margin() -> None:
    acqf = acquisition("hull_lcb", mc_samples=1024).build(TableModel(), X_DONE, Y_DONE, None, 2)
    assert isinstance(acqf, qUpperConfidenceBound)
    # A batch of one: qUCB's estimate of the closed form.
    values = acqf(CHOICES.unsqueeze(-2)).tolist()
    expected = [hull_at(x) - (m - s) for x, m, s in CANDIDATES]
    assert values == pytest.approx(expected, abs=0.01)


def certain(choices: Tensor) -> Tensor:
    """The candidates with their posterior narrowed to (nearly) a point."""
    narrow = choices.clone()
    narrow[:, 3] *= 1e-6
    return narrow


def test_hull_thompson_takes_the_deepest_below_the_current_hull_per_draw() -> None:
    # With a certain posterior every draw is the mean: the batch is ordered by the margin
    # E_hull + X - mean (10, 3.3, -5, -10 meV/atom ...), and each pick reports its margin.
    picks = acquisition("hull_thompson", 5.0).select_from_pool(
        TableModel(), certain(CHOICES), 3, X_DONE, Y_DONE, None, seed=0
    )
    assert [p.index for p in picks] == [0, 3, 4]
    margins = [hull_at(x) + 0.005 - m for x, m, _ in CANDIDATES]
    assert [p.value for p in picks] == pytest.approx([margins[0], margins[3], margins[4]], abs=1e-5)


def test_hull_thompson_follows_the_hull_not_the_lowest_energy() -> None:
    choices = certain(CHOICES)
    done = X_DONE, Y_DONE
    (lowest,) = Acquisition("thompson", [-1.0]).select_from_pool(TableModel(), choices, 1, *done, None, 0)
    assert lowest.index == 1  # the lowest formation energy, 10 meV/atom above the hull
    (deepest,) = acquisition("hull_thompson").select_from_pool(TableModel(), choices, 1, *done, None, 0)
    assert deepest.index == 0
    # Before anything is evaluated the hull is the elements' (0 everywhere): lowest energy wins.
    nothing = X_DONE[:0], Y_DONE[:0]
    (first,) = acquisition("hull_thompson").select_from_pool(TableModel(), choices, 1, *nothing, None, 0)
    assert first.index == 1


def test_hull_membership_is_within_x_of_the_hull_the_draws_make() -> None:
    # Certain posterior, X = 4 meV/atom: with the candidates at their means the hull runs
    # A - c0 (0.25, -0.06) - AB - B; c3 lies 3.3 meV/atom above it, c4 5, c1 10 (AB is lower).
    picks = acquisition("hull_membership", 4.0, mc_samples=8).select_from_pool(
        TableModel(), certain(CHOICES), 5, X_DONE, Y_DONE, None, seed=0
    )
    assert [p.index for p in picks] == [0, 3, 4, 1, 2]
    assert [p.value for p in picks] == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_hull_membership_counts_only_the_lowest_polymorph_of_a_composition() -> None:
    # A second A3B ordering 2 meV/atom above c0 is 8 meV/atom below the current hull, so
    # hull_thompson takes it second; on the drawn hull (c0 included) it is no member.
    second = torch.tensor([row(0.25, -0.058, 0.010, 0)], dtype=torch.double)
    choices = certain(torch.cat([CHOICES, second]))
    thompson = acquisition("hull_thompson", 1.0).select_from_pool(
        TableModel(), choices, 2, X_DONE, Y_DONE, None, 0
    )
    assert [p.index for p in thompson] == [0, 5]
    member = acquisition("hull_membership", 1.0, mc_samples=8)
    picks = member.select_from_pool(TableModel(), choices, 6, X_DONE, Y_DONE, None, 0)
    assert picks[0].index == 0 and picks[0].value == 1.0
    assert {p.index: p.value for p in picks}[5] == 0.0


def test_hull_membership_of_a_tie_with_a_measured_hull_structure_is_about_one_half() -> None:
    # A candidate the model puts exactly at AB's measured -0.10 (std 20 meV/atom) is on the
    # drawn hull whenever its draw is below AB's, or within X = 1 meV/atom above it.
    tie = torch.tensor([row(0.5, -0.10, 0.020, 0)], dtype=torch.double)
    (pick,) = acquisition("hull_membership", 1.0, mc_samples=2000).select_from_pool(
        TableModel(), tie, 1, X_DONE, Y_DONE, None, 0
    )
    assert pick.value == pytest.approx(phi(0.001 / 0.020), abs=0.03)


def test_pending_candidates_shape_the_drawn_hull_and_are_not_picked() -> None:
    # A pending A3B ordering certain at -0.08 takes c0's place on every draw's hull.
    pending = certain(torch.tensor([row(0.25, -0.080, 0.010, 7)], dtype=torch.double))
    member = acquisition("hull_membership", 4.0, mc_samples=8)
    picks = member.select_from_pool(TableModel(), certain(CHOICES), 5, X_DONE, Y_DONE, pending, 0)
    assert sorted(p.index for p in picks) == [0, 1, 2, 3, 4]
    assert {p.index: p.value for p in picks}[0] == 0.0


class MembersModel(Surrogate):
    """An ensemble of four members, each the row's mean plus its own offset (eV/atom)."""

    num_outputs = 1
    offsets = torch.tensor([-0.03, -0.02, 0.02, 0.03], dtype=torch.double)

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def fit(self, dataset: SupervisedDataset) -> MembersModel:
        return self

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def posterior(self, X: Tensor, *args: Any, **kwargs: Any) -> MemberPosterior:
        self.calls += 1
        values = X[..., 2].unsqueeze(-2) + self.offsets.unsqueeze(-1)  # s x N
        transform = kwargs.get("posterior_transform")
        if transform is not None:
            values = values * transform.weights[0]
        return MemberPosterior(values.unsqueeze(-1))


def test_hull_membership_of_an_ensemble_counts_its_members_in_one_call() -> None:
    # c0 (A3B, mean -0.06) in its members: -0.09, -0.08, -0.04, -0.03 against the measured
    # hull's -0.05 there: two of four are on the drawn hull.
    model = MembersModel()
    (pick,) = acquisition("hull_membership", 0.0).select_from_pool(
        model, CHOICES[:1], 1, X_DONE, Y_DONE, None, 0
    )
    assert pick.value == 0.5 and model.calls == 1


def test_inputs_without_compositions_are_refused() -> None:
    bad = CHOICES.clone()
    bad[:, 0] = 0.9
    with pytest.raises(CampaignError, match=r"input columns \[0, 1\] are not atomic fractions"):
        acquisition("hull_probability").select_from_pool(TableModel(), bad, 1, X_DONE, Y_DONE, None, 0)
    with pytest.raises(CampaignError, match=r"input columns \[0, 1\] are not atomic fractions"):
        acquisition("hull_thompson").select_from_pool(TableModel(), bad, 1, X_DONE, Y_DONE, None, 0)
    with pytest.raises(CampaignError, match=r"lack composition feature\(s\) \['x_C'\]"):
        HullTarget.from_feature_names(["A", "C"], FEATURES)


@pytest.mark.parametrize("kind", ["hull_probability", "hull_lcb", "hull_thompson", "hull_membership"])
@pytest.mark.parametrize(("weights", "target"), [([-1.0], None), ([1.0], TARGET), ([-1.0, 1.0], TARGET)])
def test_hull_kinds_need_compositions_and_one_minimised_objective(kind, weights, target) -> None:
    with pytest.raises(ValueError, match="one minimised objective"):
        Acquisition(kind, weights, hull=target)


# --- configuration ------------------------------------------------------------------------------

ALLOY = Path(__file__).resolve().parents[2] / "examples" / "alloy_discovery" / "campaign.toml"


def test_configured_hull_acquisition_reads_the_featurizer_compositions() -> None:
    config = load_config(ALLOY, {"acquisition.type": "hull_probability", "acquisition.within_mev": 5.0})
    built = build_acquisition(config)
    assert built.kind == "hull_probability" and built.hull is not None
    names = StructureFeaturizer(["Cu", "Au", "Pd"]).feature_names
    assert built.hull.elements == ("Au", "Cu", "Pd")
    assert [names[c] for c in built.hull.columns] == ["x_Au", "x_Cu", "x_Pd"]
    assert built.hull.within_ev == pytest.approx(0.005)
    member = build_acquisition(
        load_config(ALLOY, {"acquisition.type": "hull_membership", "acquisition.within_mev": 1.0})
    )
    assert member.kind == "hull_membership" and member.hull is not None
    assert member.hull.within_ev == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"acquisition.within_mev": 5.0}, "'within_mev' applies only with type = 'hull_probability'"),
        ({"acquisition.type": "hull_lcb", "objectives": [{"name": "energy"}]}, "needs one objective"),
        ({"acquisition.type": "hull_probability", "acquisition.within_mev": -1.0}, "acquisition.within_mev"),
    ],
)
def test_hull_acquisition_config_errors_name_the_key(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(ALLOY, overrides)


def test_hull_acquisition_needs_a_structure_pool(branin_config) -> None:
    path = branin_config(acquisition="hull_lcb")
    path.write_text(path.read_text().replace('name = "y"', 'name = "formation_energy_per_atom"'))
    with pytest.raises(ConfigError, match=re.escape("needs a structure pool")):
        load_config(path)


def test_configurations_without_within_mev_keep_their_hash() -> None:
    config = load_config(ALLOY)
    assert "within_mev" not in config.identity()["acquisition"]
    with_hull = load_config(ALLOY, {"acquisition.type": "hull_probability", "acquisition.within_mev": 1.0})
    assert with_hull.identity()["acquisition"]["within_mev"] == 1.0
