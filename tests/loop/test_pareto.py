"""Pareto fronts and hypervolumes on hand-made sets."""

from __future__ import annotations

import pytest
import torch

from loop.pareto import hypervolume, hypervolume_contributions, pareto_mask, pareto_report, reference_point


def test_pareto_mask_keeps_exactly_the_non_dominated_rows() -> None:
    Y = torch.tensor(
        [
            [1.0, 5.0],  # front
            [2.0, 4.0],  # front
            [1.5, 3.0],  # dominated by [2, 4]
            [4.0, 1.0],  # front
            [0.5, 0.5],  # dominated
            [4.0, 1.0],  # duplicate of a front point: kept
            [3.0, 1.0],  # dominated by [4, 1]
        ]
    )
    assert pareto_mask(Y).tolist() == [True, True, False, True, False, True, False]


def test_hypervolume_of_a_hand_made_front() -> None:
    # Three boxes above (0, 0): union area = 1*5 + (2-1)*4 + (4-2)*1 = 11.
    Y = torch.tensor([[1.0, 5.0], [2.0, 4.0], [4.0, 1.0], [1.5, 3.0]])
    assert hypervolume(Y, torch.tensor([0.0, 0.0])) == pytest.approx(11.0)
    # Points that do not dominate the reference point add nothing.
    assert hypervolume(torch.tensor([[-1.0, 9.0]]), torch.tensor([0.0, 0.0])) == 0.0


def test_reference_point_given_in_own_sign_and_inferred() -> None:
    signs = torch.tensor([1.0, -1.0])
    assert reference_point(torch.zeros(1, 2), [0.0, 10.0], signs).tolist() == [0.0, -10.0]
    inferred = reference_point(torch.tensor([[1.0, 5.0], [4.0, 1.0]]))
    assert (inferred < torch.tensor([1.0, 1.0])).all()  # below the nadir of the front


def test_pareto_report_minimising_one_objective_and_hypervolume_per_cycle() -> None:
    # Maximise a, minimise b. Cycle 1: (1, 2); cycle 2 adds (2, 3) (front) and (0.5, 4) (dominated).
    Y = torch.tensor([[1.0, 2.0], [2.0, 3.0], [0.5, 4.0]])
    report = pareto_report([1, 2, 2], Y, torch.tensor([1.0, -1.0]), ["a", "b"], ["p", "q", "r"], [0.0, 5.0])
    assert [p["candidate_id"] for p in report["front"]] == ["p", "q"]
    assert report["reference_point"] == [0.0, 5.0]
    # cycle 1: 1 x 3 = 3; cycle 2: adds (2-1) x (5-3) = 2.
    assert [h["hypervolume"] for h in report["hypervolume_by_cycle"]] == pytest.approx([3.0, 5.0])


def test_hypervolume_contributions_are_what_each_row_alone_adds() -> None:
    # Total 11 above (0, 0) (see above); without [1, 5] 10 remain, without [2, 4] or [4, 1] 9.
    Y = torch.tensor([[1.0, 5.0], [2.0, 4.0], [4.0, 1.0], [1.5, 3.0], [4.0, 1.0]])
    gains = hypervolume_contributions(Y[:4], torch.tensor([0.0, 0.0]))
    assert gains.tolist() == pytest.approx([1.0, 2.0, 2.0, 0.0])
    # A repeated front row adds nothing that its twin does not.
    assert hypervolume_contributions(Y, torch.tensor([0.0, 0.0]))[[2, 4]].tolist() == [0.0, 0.0]
