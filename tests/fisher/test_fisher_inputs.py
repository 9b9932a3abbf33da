"""fisher_diag on what PyTorch users pass: Datasets, numpy arrays, dict batches, keyword models, tuple / dict /
object outputs, torch.compile'd modules and a Hugging Face model from a tiny config, each against a naive
per-sample loop in float64."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from fisher_models import naive_fisher
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fisherx import fisher_diag

TOL = 1e-10


def _naive(model, inputs, y, select=lambda o: o):
    """F_j = (1/N) Σ_i (∂ℓ_i/∂θ_j)², one backward per sample; ``inputs`` a dict of keyword tensors."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(y.shape[0]):
        out = select(model(**{k: v[i : i + 1] for k, v in inputs.items()}))
        li = F.cross_entropy(out, y[i : i + 1])
        for n, g in zip(params, torch.autograd.grad(li, list(params.values()), allow_unused=True), strict=True):
            if g is not None:
                acc[n] += g.square()
    return {n: a / y.shape[0] for n, a in acc.items()}


def _close(f, ref):
    # Relative to the largest entry of the whole Fisher: some entries are exactly zero in theory (a key bias of
    # attention), where both sides are rounding noise.
    scale = max(float(r.abs().max()) for r in ref.values())
    assert set(f.keys()) == set(ref)
    for n, r in ref.items():
        assert float((f[n] - r).abs().max()) <= TOL * scale, n


class _Kw(nn.Module):
    """A model called with keyword inputs, returning an output of the chosen kind."""

    def __init__(self, kind="tensor"):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.lin = nn.Linear(6 + 3, 4)
        self.kind = kind

    def forward(self, tokens, extra):
        h = torch.cat([self.emb(tokens).mean(1), extra], dim=1)
        out = self.lin(torch.tanh(h))
        if self.kind == "tuple":
            return out, h
        if self.kind == "dict":
            return {"logits": out, "hidden": h}
        if self.kind == "object":
            return SimpleNamespace(logits=out, hidden=h)
        return out


def _kw_data(n=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "tokens": torch.randint(0, 11, (n, 5), generator=g),
        "extra": torch.randn(n, 3, generator=g, dtype=torch.float64),
    }, torch.randint(0, 4, (n,), generator=g)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 3)).double()


def test_dataset_numpy_and_pair_agree_with_naive():
    m = _mlp()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(37, 7, generator=g, dtype=torch.float64), torch.randint(0, 3, (37,), generator=g)
    ref = naive_fisher(m, x, y)
    for data, kw in [
        ((x, y), {}),
        (TensorDataset(x, y), {}),
        (TensorDataset(x, y), {"batch_size": 5}),
        ((x.numpy(), y.numpy()), {}),
        ((x.numpy(), y.numpy()), {"batch_size": 8}),
        (DataLoader(TensorDataset(x, y), batch_size=10), {}),
    ]:
        f = fisher_diag(m, data, progress=False, **kw)
        assert f.n_samples == 37
        _close(f, ref)


@pytest.mark.parametrize(
    "kind,output_fn",
    [
        ("tensor", None),
        ("tuple", 0),
        ("tuple", lambda o: o[0]),
        ("dict", None),
        ("dict", "logits"),
        ("object", None),
        ("object", "logits"),
    ],
)
def test_dict_batches_keyword_model_and_outputs(kind, output_fn):
    torch.manual_seed(0)
    m = _Kw(kind).double()
    inputs, y = _kw_data()
    batches = [{**{k: v[s : s + 4] for k, v in inputs.items()}, "target": y[s : s + 4]} for s in range(0, 13, 4)]
    f = fisher_diag(m, batches, label_key="target", output_fn=output_fn, progress=False)
    ref = _naive(
        m,
        inputs,
        y,
        select=lambda o: (
            o if kind == "tensor" else (o[0] if kind == "tuple" else (o["logits"] if kind == "dict" else o.logits))
        ),
    )
    _close(f, ref)


def test_batch_fn_splits_any_batch():
    torch.manual_seed(0)
    m = _Kw().double()
    inputs, y = _kw_data()
    batches = [(inputs["tokens"][s : s + 6], inputs["extra"][s : s + 6], y[s : s + 6]) for s in range(0, 13, 6)]
    f = fisher_diag(m, batches, batch_fn=lambda b: ({"tokens": b[0], "extra": b[1]}, b[2]), progress=False)
    _close(f, _naive(m, inputs, y))


class _DictDataset(Dataset):
    def __init__(self, inputs, y):
        self.inputs, self.y = inputs, y

    def __len__(self):
        return self.y.shape[0]

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.inputs.items()}, "labels": self.y[i]}


def test_dataset_of_dicts_is_batched_and_labels_is_the_default_key():
    torch.manual_seed(0)
    m = _Kw().double()
    inputs, y = _kw_data()
    f = fisher_diag(m, _DictDataset(inputs, y), batch_size=4, progress=False)
    assert f.n_samples == 13
    _close(f, _naive(m, inputs, y))


def test_compiled_module_is_unwrapped_with_a_warning():
    m = _mlp()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(11, 7, generator=g, dtype=torch.float64), torch.randint(0, 3, (11,), generator=g)
    cm = torch.compile(m)
    with pytest.warns(UserWarning, match="torch.compile'd; computing the Fisher on its original Sequential"):
        f = fisher_diag(cm, (x, y), progress=False)
    assert list(f.keys()) == [n for n, _ in m.named_parameters()]  # no '_orig_mod.' prefix
    _close(f, naive_fisher(m, x, y))


def test_bad_inputs_one_line_errors():
    m = _Kw().double()
    inputs, y = _kw_data()
    batch = {**inputs, "y": y}
    cases = [
        (
            dict(data=[batch]),
            TypeError,
            r"batch 0 is a dict without the targets key 'labels' \(it has 'tokens', "
            r"'extra', 'y'\); pass label_key=\.\.\. or batch_fn=\.\.\.",
        ),
        (dict(data=[(inputs, y)], label_key="y"), TypeError, r"label_key='y' but batch 0 is a tuple, not a dict"),
        (
            dict(data=[batch], batch_fn=lambda b: b),
            TypeError,
            r"batch_fn must return an \(inputs, targets\) pair; "
            r"for batch 0 it returned dict",
        ),
        (dict(data=[(inputs, y, y)]), TypeError, r"batch 0 is not an \(x, y\) pair \(got tuple of 3\)"),
        (dict(data=inputs["extra"]), TypeError, r"data must be a Dataset, a DataLoader, .* got Tensor"),
        (
            dict(data=DataLoader(TensorDataset(inputs["extra"], y)), batch_size=3),
            ValueError,
            r"batch_size applies to a Dataset or a pair",
        ),
        (dict(data=(inputs["extra"], y), batch_size=0), ValueError, r"batch_size must be a positive int, got 0"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg) as info:
            fisher_diag(m, progress=False, **kw)
        assert "\n" not in str(info.value)
    for kind, fn, msg in [
        ("tuple", None, r"the model returned tuple, not a tensor; pass output_fn="),
        ("dict", "hidden2", r"output_fn='hidden2' selected a NoneType from the model's dict"),
        ("tuple", "logits", r"output_fn='logits' selected a NoneType from the model's tuple output"),
        ("tuple", 2.5, r"output_fn=2.5 cannot select from a tuple output"),
    ]:
        with pytest.raises(TypeError, match=msg):
            fisher_diag(_Kw(kind).double(), [({k: v for k, v in inputs.items()}, y)], output_fn=fn, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# A Hugging Face model from a tiny config (no weights downloaded), fed its own dict batches.


def _bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=16,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(cfg).double().eval()


def test_hugging_face_bert_dict_batches():
    m = _bert()
    g = torch.Generator().manual_seed(3)
    n, t = 7, 6
    inputs = {
        "input_ids": torch.randint(0, 40, (n, t), generator=g),
        "token_type_ids": torch.zeros(n, t, dtype=torch.long),
        "attention_mask": torch.ones(n, t, dtype=torch.long),
        "position_ids": torch.arange(t).expand(n, t),
    }
    inputs["attention_mask"][:3, 4:] = 0  # padded samples
    y = torch.randint(0, 3, (n,), generator=g)
    batches = [{**{k: v[s : s + 4] for k, v in inputs.items()}, "labels": y[s : s + 4]} for s in range(0, n, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = fisher_diag(m, batches, progress=False)  # .logits of the output object, by default
    _close(f, _naive(m, inputs, y, select=lambda o: o.logits))


def test_hugging_face_bert_default_position_ids_take_the_shared_route():
    # Without position_ids, BERT looks its position table up on (1, T) ids shared by the batch and adds the result
    # to the token embeddings: a shared call, whose per-sample gradients come from taps on that addition. (It once
    # took the whole-model torch.func path, which HF's mask code cannot run under vmap with an attention_mask.)
    from fisherx.fisher import engine

    m = _bert()
    g = torch.Generator().manual_seed(4)
    inputs = {
        "input_ids": torch.randint(0, 40, (5, 6), generator=g),
        "attention_mask": torch.ones(5, 6, dtype=torch.long),
    }
    inputs["attention_mask"][:2, 4:] = 0
    y = torch.randint(0, 3, (5,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback, no whole-model path
        f = fisher_diag(m, [{**inputs, "labels": y}], progress=False)
    plan = engine._PLANS[m][1]
    assert plan.external == []
    assert "bert.embeddings.position_embeddings.weight" in plan.shared["bert.embeddings.position_embeddings"].values()
    _close(f, _naive(copy.deepcopy(m), inputs, y, select=lambda o: o.logits))


def test_hugging_face_gpt2_on_rules_only():
    # GPT-2's projections are Hugging Face Conv1D layers (a Linear with its weight stored (in, out)), ruled by
    # qualified name; its position table is looked up on (1, T) ids and moved with .to(device) before the addition
    # (a shared call all the same). No fallback, no whole-model path, exact against the per-sample loop.
    transformers = pytest.importorskip("transformers")
    from fisherx.fisher import engine

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2, num_labels=3, pad_token_id=0,
        bos_token_id=1, eos_token_id=1,
    )  # fmt: skip
    m = transformers.GPT2ForSequenceClassification(cfg).double().eval()
    g = torch.Generator().manual_seed(5)
    inputs = {"input_ids": torch.randint(1, 40, (5, 7), generator=g)}
    y = torch.randint(0, 3, (5,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        f = fisher_diag(m, [{**inputs, "labels": y}], progress=False)
    plan = engine._PLANS[m][1]
    assert not plan.fallback and plan.external == [] and "transformer.wpe" in plan.shared
    _close(f, _naive(copy.deepcopy(m), inputs, y, select=lambda o: o.logits))
