"""Fishers refuse inputs that would make them silently wrong: ignored labels, all-ignored batches, overflow."""

import pytest
import torch
from torch import nn

from fisherx import fisher_diag


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def test_ignored_labels_are_not_counted_in_n():
    m = _model()
    x = torch.randn(9, 5, dtype=torch.float64)
    y = torch.tensor([0, -100, 2, 1, -100, 0, 2, -100, 1])
    keep = y != -100
    f = fisher_diag(m, [(x[:4], y[:4]), (x[4:], y[4:])])
    ref = fisher_diag(m, [(x[keep], y[keep])])
    assert f.n_samples == ref.n_samples == 6
    for k in f:
        torch.testing.assert_close(f[k], ref[k], rtol=1e-12, atol=0)
    # a loss object's own ignore_index counts too
    ce = nn.CrossEntropyLoss(ignore_index=2, reduction="none")
    assert fisher_diag(m, [(x[keep], y[keep])], loss=ce).n_samples == int((y[keep] != 2).sum())


def test_an_all_ignored_batch_is_refused():
    m = _model()
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch 1 .*every label is the ignore_index -100"):
        fisher_diag(m, [(x, torch.tensor([0, 1, 2, 0])), (x, torch.full((4,), -100))])


def test_an_overflowing_fisher_is_refused_naming_the_parameter():
    m = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].weight[1] = -1.0
    x = torch.full((2, 3), 1e20)  # finite logits and losses (~3e20), squared gradients ~1e40 > float32 max
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="Fisher of parameter '0.weight' is not finite"):
        fisher_diag(m, [(x, y)])
