"""FisherDiag and fisher_diag behaviour: kind='mc' against the exact expectation, bad input, files, distances."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from fisher_models import naive_fisher
from torch import nn

import fisherx
from fisherx import io as fx_io


def _tiny():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval()


def test_mc_fisher_converges_to_the_exact_expectation():
    # Exact: F_j = (1/N) Σ_i Σ_c p(c|x_i)·g_ic,j², enumerating the 3 labels. With M draws per input the estimate
    # has variance (1/(N²M)) Σ_i Var_c(g_ic,j²) exactly; every entry must lie within 5.5 standard deviations
    # (a Gaussian tail of 4e-8 per entry; the draws are seeded, so the test is deterministic anyway).
    model = _tiny()
    n, classes, draws = 6, 3, 300
    x = torch.randn(n, 3, dtype=torch.float64)
    probs = torch.softmax(model(x), dim=1).detach()
    names = [k for k, _ in model.named_parameters()]
    mean = {k: 0 for k in names}
    var = {k: 0 for k in names}
    for i in range(n):
        g2 = {c: naive_fisher(model, x[i : i + 1], torch.tensor([c])) for c in range(classes)}  # g_ic² (one sample)
        for k in names:
            e = sum(probs[i, c] * g2[c][k] for c in range(classes))
            e2 = sum(probs[i, c] * g2[c][k] ** 2 for c in range(classes))
            mean[k] = mean[k] + e / n
            var[k] = var[k] + (e2 - e**2) / (n * n * draws)
    torch.manual_seed(123)
    est = fisherx.fisher_diag(model, (x, torch.zeros(n, dtype=torch.long)), kind="mc", mc_samples=draws, progress=False)
    assert est.meta["kind"] == "mc" and est.meta["mc_samples"] == draws and est.n_samples == n
    for k in names:
        sd = var[k].clamp_min(1e-300).sqrt()
        z = ((est[k] - mean[k]) / sd).abs().max().item()
        assert z < 5.5, f"{k}: max |z| = {z:.2f}"
    # The empirical Fisher with fixed labels is a different quantity: the test can tell them apart.
    emp = fisherx.fisher_diag(model, (x, torch.zeros(n, dtype=torch.long)), progress=False)
    assert any(((emp[k] - mean[k]) / var[k].clamp_min(1e-300).sqrt()).abs().max() > 10 for k in names)


def test_mc_with_mse_draws_gaussian_targets():
    torch.manual_seed(4)
    model = nn.Linear(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    # For ½‖f − ỹ‖² with ỹ ~ N(f, I): E[(∂ℓ/∂W)²] = E[ε²]·x² = x² per output row; bias: 1.
    est = fisherx.fisher_diag(
        model, (x, torch.zeros(5, 2, dtype=torch.float64)), loss="mse", kind="mc", mc_samples=2000, progress=False
    )
    exact_w = x.square().mean(0).expand(2, 3)
    # Var(ε²) = 2, so the relative sd of each entry is at most √(2/2000) ≈ 0.032 (one sample dominating x²) and
    # ≈ 0.014 when the five contribute evenly: 0.09 is ≥ 2.8 sd in the worst case, ≥ 6 typically; seeded draws.
    torch.testing.assert_close(est["weight"], exact_w, rtol=0.09, atol=0.0)
    torch.testing.assert_close(est["bias"], torch.ones(2, dtype=torch.float64), rtol=0.09, atol=0.0)


def test_fisherdiag_is_a_read_only_mapping_with_reductions():
    model = _tiny()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    f = fisherx.fisher_diag(model, (x, y), progress=False)
    assert isinstance(f, fisherx.FisherDiag)
    assert list(f) == [k for k, _ in model.named_parameters()]
    assert f["0.weight"].shape == model[0].weight.shape
    with pytest.raises(TypeError):
        f["0.weight"] = torch.zeros(4, 3)  # read-only
    flat = f.flat()
    assert flat.shape == (sum(p.numel() for p in model.parameters()),)
    assert f.trace() == pytest.approx(flat.sum().item(), rel=1e-12)
    nf = f.normalized()
    assert nf.trace() == pytest.approx(1.0, rel=1e-12)
    assert f.meta["model"].endswith("Sequential") and f.meta["loss"] == "cross_entropy"
    assert f.meta["kind"] == "empirical" and f.meta["n_params"] == flat.numel()
    # The distances take FisherDiag directly; d(F, F) = 0, and a different layout is named.
    assert fisherx.ftd(f, f).item() == pytest.approx(0.0, abs=1e-7)
    other = fisherx.fisher_diag(
        nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double(), (x, y), progress=False
    )
    with pytest.raises(ValueError, match="0.weight"):
        fisherx.ftd(f, other)
    zero = fisherx.FisherDiag({"w": torch.zeros(3)}, 1)
    with pytest.raises(ValueError, match="zero trace"):
        zero.normalized()


def test_save_and_load_round_trip_and_refuse_bad_files(tmp_path):
    model = _tiny()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    f = fisherx.fisher_diag(model, (x, y), progress=False)
    f.meta["task"] = "toy/T0"
    f.meta["test_accuracy"] = 0.5
    path = tmp_path / "f.fx"
    f.save(path)
    g = fisherx.FisherDiag.load(path)
    assert list(g) == list(f) and g.n_samples == f.n_samples and g.meta == f.meta
    for k in f:
        assert torch.equal(g[k], f[k])
    # Truncated and foreign files: a FormatError naming the file.
    data = path.read_bytes()
    (tmp_path / "cut.fx").write_bytes(data[: len(data) // 2])
    with pytest.raises(fx_io.FormatError, match="cut.fx"):
        fisherx.FisherDiag.load(tmp_path / "cut.fx")
    (tmp_path / "foreign.fx").write_bytes(b"PK\x03\x04 not ours at all" * 10)
    with pytest.raises(fx_io.FormatError, match="foreign.fx"):
        fisherx.FisherDiag.load(tmp_path / "foreign.fx")
    fx_io.save_tensors(tmp_path / "other.fx", {"a": torch.zeros(2)}, {"format": "something else"})
    with pytest.raises(fx_io.FormatError, match="not a FisherDiag"):
        fisherx.FisherDiag.load(tmp_path / "other.fx")
    # A save that fails (metadata that is not JSON) leaves nothing behind.
    f.meta["bad"] = object()
    with pytest.raises(TypeError):
        f.save(tmp_path / "never.fx")
    assert sorted(os.listdir(tmp_path)) == ["cut.fx", "f.fx", "foreign.fx", "other.fx"]


class _NanAt(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)


def test_bad_input_gives_clear_errors():
    model = _NanAt()
    x, y = torch.randn(9, 3), torch.randint(0, 2, (9,))
    x[7, 1] = float("nan")  # sample 7 sits in batch 2 of size 3
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    with pytest.raises(ValueError, match=r"batch 2 .*sample 7"):
        fisherx.fisher_diag(model, dl, progress=False)
    with pytest.raises(ValueError, match="empty"):
        fisherx.fisher_diag(model, (torch.empty(0, 3), torch.empty(0, dtype=torch.long)), progress=False)
    with pytest.raises(ValueError, match="empty"):
        fisherx.fisher_diag(model, [], progress=False)
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fisherx.fisher_diag(frozen, (x[:3], y[:3]), progress=False)
    with pytest.raises(ValueError, match="one loss per sample"):
        fisherx.fisher_diag(model, (x[:3], y[:3]), loss=lambda o, t: F.cross_entropy(o, t), progress=False)
    mixed = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2, device="meta"))
    with pytest.raises(ValueError, match="several devices"):
        fisherx.fisher_diag(mixed, (x[:3], y[:3]), progress=False)
    with pytest.raises(ValueError, match="device=cuda:3"):
        fisherx.fisher_diag(model, (x[:3], y[:3]), device="cuda:3", progress=False)
    with pytest.raises(ValueError, match="kind"):
        fisherx.fisher_diag(model, (x[:3], y[:3]), kind="true", progress=False)
    with pytest.raises(ValueError, match="kind='mc'"):
        fisherx.fisher_diag(model, (x[:3], y[:3]), kind="mc", loss=lambda o, t: o.sum(1), progress=False)
    with pytest.raises(TypeError, match="model.float()"):
        fisherx.fisher_diag(nn.Linear(3, 2).half(), (x[:3].half(), y[:3]), progress=False)
    with pytest.raises(TypeError, match="data must be"):
        fisherx.fisher_diag(model, x, progress=False)


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
    model = _tiny()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    fisherx.fisher_diag(model, (x, y), progress=True)  # stderr is captured, not a terminal: no bar
    assert capsys.readouterr().err == ""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    fisherx.fisher_diag(model, (x, y), progress=True)
    assert "fisher_diag" in capsys.readouterr().err
    fisherx.fisher_diag(model, (x, y), progress=False)
    assert capsys.readouterr().err == ""
