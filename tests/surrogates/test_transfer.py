"""Tests of surrogates.transfer: the guard's decisions and what each round fits."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from botorch.models import MultiTaskGP
from botorch.utils.datasets import SupervisedDataset

import surrogates.gp as gp_module
from surrogates.transfer import AGREEMENT_LEVEL, TransferGP, _kendall_agreement

UNIT = torch.tensor([[0.0], [1.0]], dtype=torch.double)


def dataset(X: torch.Tensor, Y: torch.Tensor) -> SupervisedDataset:
    return SupervisedDataset(X, Y, feature_names=["x"], outcome_names=["y"])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small, shared machine two threads make GP fits several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def target() -> tuple[torch.Tensor, torch.Tensor]:
    """Ten rounds' worth of a new campaign on sin(6x): 10 random inputs of [0, 1]."""
    X = torch.rand(10, 1, dtype=torch.double, generator=torch.Generator().manual_seed(0))
    return X, torch.sin(6 * X)


def source(related: bool) -> tuple[str, SupervisedDataset]:
    """A past campaign of 30 results: the target's function shifted (related), or noise."""
    X = torch.linspace(0.0, 1.0, 30, dtype=torch.double).unsqueeze(-1)
    noise = 3 * torch.randn(30, 1, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    return ("past", dataset(X, torch.sin(6 * X) + 0.3 if related else noise))


def inverted_source() -> tuple[str, SupervisedDataset]:
    """A past campaign of 30 results on the target's function negated: it ranks everything backwards."""
    X = torch.linspace(0.0, 1.0, 30, dtype=torch.double).unsqueeze(-1)
    return ("inverted", dataset(X, -torch.sin(6 * X)))


@pytest.fixture
def joint_fits(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every multi-task fit: its L-BFGS cap and the kernel hyper-parameters it starts from."""
    fits: list[dict[str, Any]] = []
    real_fit = gp_module.fit_gpytorch_mll

    def recording_fit(mll: Any, optimizer_kwargs: dict[str, Any]) -> Any:
        if isinstance(mll.model, MultiTaskGP):
            start = {k: v.clone() for k, v in mll.model.covar_module.state_dict().items()}
            maxiter = optimizer_kwargs["options"]["maxiter"]
            fits.append({"model": mll.model, "maxiter": maxiter, "start": start})
        return real_fit(mll, optimizer_kwargs=optimizer_kwargs)

    monkeypatch.setattr(gp_module, "fit_gpytorch_mll", recording_fit)
    return fits


def test_a_used_source_is_fitted_once_per_round(target, joint_fits):
    X, Y = target
    gp = TransferGP([source(related=True)], UNIT, max_iterations=60)
    for n in (8, 9, 10):
        before = len(joint_fits)
        torch.manual_seed(n)
        gp.fit(dataset(X[:n], Y[:n]))
        assert gp.used == ["past"]
        assert len(joint_fits) == before + 1  # the guard's joint GP is the model
        assert gp.model is joint_fits[-1]["model"]
    assert [f["maxiter"] for f in joint_fits] == [60, 60, 60]


def test_joint_fits_start_from_the_last_rounds_hyperparameters(target, joint_fits):
    X, Y = target
    gp = TransferGP([source(related=True)], UNIT)
    gp.fit(dataset(X[:8], Y[:8]))
    fitted = {k: v.clone() for k, v in joint_fits[-1]["model"].covar_module.state_dict().items()}
    gp.fit(dataset(X[:9], Y[:9]))
    start = joint_fits[-1]["start"]
    assert all(torch.equal(start[k], fitted[k]) for k in fitted)


@pytest.mark.parametrize("related", [True, False], ids=["related", "unrelated"])
def test_a_warm_started_round_decides_as_a_fresh_fit(target, related):
    X, Y = target
    torch.manual_seed(2)
    warm = TransferGP([source(related)], UNIT).fit(dataset(X[:8], Y[:8]))
    torch.manual_seed(3)
    warm.fit(dataset(X, Y))
    torch.manual_seed(3)
    fresh = TransferGP([source(related)], UNIT).fit(dataset(X, Y))
    assert warm.used == fresh.used == (["past"] if related else [])
    assert warm.summary()["sources_used"] == warm.used


def test_kendalls_tau_counts_concordant_minus_discordant_pairs():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.double)
    assert _kendall_agreement(a, 10 * a)[0] == pytest.approx(1.0)
    assert _kendall_agreement(a, -a)[0] == pytest.approx(-1.0)
    # 6 pairs: one tied in b; of the other five, 4 concordant and 1 discordant (tau-b).
    assert _kendall_agreement(a, torch.tensor([0.0, 0.0, 2.0, 1.0]))[0] == pytest.approx(3 / (6 * 5) ** 0.5)
    assert _kendall_agreement(a, torch.zeros(4)) == (0.0, 1.0), "a constant says nothing"


@pytest.mark.parametrize(("n", "p"), [(2, 1 / 2), (3, 1 / 6), (4, 1 / 24), (5, 1 / 120)])
def test_the_agreements_p_value_is_the_chance_of_a_perfect_ranking(n, p):
    """One-sided and exact: all n ranked right happens by chance once in n! orderings, so three
    results can never agree at the 5% level and four can."""
    a = torch.arange(n, dtype=torch.double)
    assert _kendall_agreement(a, a)[1] == pytest.approx(p)
    assert (p <= AGREEMENT_LEVEL) == (n >= 4)


def test_a_related_source_waits_for_results_that_show_it_right(target):
    """Ranking two or three results right is chance; four are enough for the source that is."""
    X, Y = target
    gp = TransferGP([source(related=True)], UNIT)
    for n, used in [(2, []), (3, []), (4, ["past"])]:
        torch.manual_seed(n)
        gp.fit(dataset(X[:n], Y[:n]))
        assert gp.agreement["past"] == pytest.approx(1.0)
        assert gp.used == used
        assert isinstance(gp.model, MultiTaskGP) == bool(used)
    assert gp.summary()["source_agreement_p"] == {"past": round(1 / 24, 4)}


def test_a_source_with_its_optimum_elsewhere_is_not_used_on_a_weak_agreement(target):
    """A past campaign on the target's function with its phase shifted: it ranks the target's
    ten results more right than wrong (tau 1/3), which ten results do not tell from chance, and
    it would point the first picks at its own minimum, not the target's."""
    X, Y = target
    grid = torch.linspace(0.0, 1.0, 30, dtype=torch.double).unsqueeze(-1)
    shifted = ("shifted", dataset(grid, torch.sin(6 * grid + 1)))
    torch.manual_seed(0)
    gp = TransferGP([shifted], UNIT).fit(dataset(X, Y))
    assert gp.agreement["shifted"] > 0 and gp.agreement_p["shifted"] > AGREEMENT_LEVEL
    assert gp.used == [] and not isinstance(gp.model, MultiTaskGP)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_a_source_that_ranks_the_targets_results_backwards_is_never_used(target, n):
    """BoTorch's index kernel can only borrow from a positively correlated source, so an inverted
    one is never used, also before the likelihood can judge."""
    X, Y = target
    gp = TransferGP([inverted_source(), source(related=True)], UNIT)
    torch.manual_seed(n)
    gp.fit(dataset(X[:n], Y[:n]))
    assert gp.agreement["inverted"] < 0 < gp.agreement["past"]
    assert "inverted" not in gp.used
    assert gp.summary()["source_agreement"] == {k: round(v, 3) for k, v in gp.agreement.items()}


def test_with_one_target_result_no_source_is_used_and_the_model_is_the_cold_gp(target):
    X, Y = target
    gp = TransferGP([source(related=True)], UNIT).fit(dataset(X[:1], Y[:1]))
    assert gp.used == [] and gp.agreement == {}
    assert not isinstance(gp.model, MultiTaskGP)


def test_without_the_guard_every_source_is_used_each_round(target):
    X, Y = target
    gp = TransferGP([inverted_source()], UNIT, guard=False)
    for n in (2, 3):
        gp.fit(dataset(X[:n], Y[:n]))
        assert gp.used == ["inverted"] and isinstance(gp.model, MultiTaskGP)
        assert gp.model.train_targets.shape[-1] == 30 + n, "this round's data, not last round's model"
