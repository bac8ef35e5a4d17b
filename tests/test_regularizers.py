"""The repulsive position loss against a direct reading of the authors' formula."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import dcls_zoo
from dcls_zoo.positions import position_owners
from dcls_zoo.regularizers import repulsive_loss, repulsive_loss_of


def _loop_reference(positions: torch.Tensor, threshold: float = 1.0) -> float:
    """2 / (K (K-1) N) * sum_n sum_{i<j} max(0, threshold - ||p_ni - p_nj||), one pair at a time."""
    d, c_out, c_in, k = positions.shape
    total, kernels = 0.0, 0
    for o, i in itertools.product(range(c_out), range(c_in)):
        kernels += 1
        for a, b in itertools.combinations(range(k), 2):
            distance = math.sqrt(sum((positions[axis, o, i, a] - positions[axis, o, i, b]).item() ** 2 for axis in range(d)))
            total += max(0.0, threshold - distance)
    return 2.0 * total / (k * (k - 1) * kernels)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_repulsive_loss_matches_the_pairwise_formula(d):
    torch.manual_seed(d)
    positions = torch.randn(d, 3, 2, 6, dtype=torch.float64) * 0.8
    assert repulsive_loss_of(positions).item() == pytest.approx(_loop_reference(positions), rel=1e-12)
    assert repulsive_loss_of(positions, threshold=2.5).item() == pytest.approx(_loop_reference(positions, 2.5), rel=1e-12)


def test_far_apart_elements_cost_nothing_and_coincident_ones_cost_the_threshold():
    spread = torch.tensor([0.0, 3.0, 6.0]).view(1, 1, 1, 3)
    assert repulsive_loss_of(spread).item() == 0.0
    stacked = torch.zeros(2, 1, 1, 4, requires_grad=True)
    loss = repulsive_loss_of(stacked)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.isfinite(stacked.grad).all()


def test_gradient_pushes_close_elements_apart():
    positions = torch.tensor([[[[0.0, 0.3]]], [[[0.0, 0.0]]]], requires_grad=True)
    repulsive_loss_of(positions).backward()
    # descending the gradient moves element 0 left and element 1 right along the first axis
    assert positions.grad[0, 0, 0, 0] > 0 > positions.grad[0, 0, 0, 1]


def test_model_loss_averages_distinct_position_tensors_once():
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=1, patch_size=2)
    owners = position_owners(model)
    assert [holder.path for holder in owners] == [f"stages.{i}.dcls_shared.conv_dw" for i in range(4)]
    assert {id(h.owner.P) for h in owners} == {id(p) for n, p in model.named_parameters() if n.endswith(".P")}
    expected = torch.stack([repulsive_loss_of(holder.owner.P) for holder in owners]).mean()
    assert repulsive_loss(model).item() == pytest.approx(expected.item())
    assert repulsive_loss(model).item() > 0  # positions drawn at init are crowded in a 17x17 window
    plain = dcls_zoo.create_model("convnext_k7_atto", num_classes=10)
    assert repulsive_loss(plain).item() == 0.0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(d, C_out, C_in/groups, K\)"):
        repulsive_loss_of(torch.zeros(2, 3, 4))
