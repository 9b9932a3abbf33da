"""ε-approximation networks: shapes for small inputs and any channel count, heads, seeding, training."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fisherx.models import ARCHS, EpsilonWarning, build, evaluate, seeded, train
from fisherx.tasks import preset

PARAMS = {"vgg16": 14.72e6, "resnet18": 11.17e6, "densenet121": 6.96e6}  # the standard sizes, give or take a head


SHAPES = [(1, 8), (3, 32), (2, 5)]  # digits, CIFAR, and an odd size with an odd channel count


@pytest.mark.parametrize(
    "arch,channels,size", [(a, c, s) for a in ARCHS for c, s in SHAPES if a != "densenet121" or s != 32]
)  # the slowest: spare CI the time
def test_shapes_for_small_inputs_and_any_channel_count(arch, channels, size):
    with seeded(0):
        m = build(arch, channels, 7, size)
    assert isinstance(m.classifier, nn.Linear) and m.classifier.out_features == 7
    m.eval()
    out = m(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    if arch in PARAMS:
        assert abs(sum(p.numel() for p in m.parameters()) - PARAMS[arch]) / PARAMS[arch] < 0.01


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    with seeded(3):
        a = build("cnn", 1, 3, 8)
    with seeded(3):
        b = build("cnn", 1, 3, 8)
    with seeded(4):
        c = build("cnn", 1, 3, 8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_build_errors():
    with pytest.raises(ValueError, match="unknown architecture 'vgg19'; choose one of vgg16"):
        build("vgg19", 3, 10, 32)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        build("mlp", 3, 0, 32)


def test_train_reaches_the_papers_accuracy_on_digits_and_is_deterministic():
    data = preset("digits")[0].load()
    results = []
    for _ in range(2):
        with seeded(0):
            model = build("mlp", 1, 2, 8)
        results.append(train(model, data, epochs=5, seed=0, progress=False))
    r = results[0]
    assert r.test_accuracy >= 0.95 and r.meets_epsilon and not r.model.training
    assert r.test_accuracy == evaluate(r.model, *data.test)
    assert [h["loss"] for h in r.history] == [h["loss"] for h in results[1].history]
    assert all(torch.equal(p, q) for p, q in zip(r.model.parameters(), results[1].model.parameters(), strict=True))
    assert r.history[0]["loss"] > r.history[-1]["loss"]


def test_train_warns_when_missing_epsilon_and_can_freeze_features():
    data = preset("digits")[3].load()
    with seeded(0):
        model = build("mlp", 1, 10, 8)
    before = [p.detach().clone() for p in model.features.parameters()]
    with pytest.warns(EpsilonWarning, match=r"test accuracy .* < 1 − ε = 0\.9999"):
        train(model, data, epochs=1, seed=0, progress=False, epsilon=1e-4, trainable=model.classifier.parameters())
    assert all(torch.equal(p, q) for p, q in zip(before, model.features.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())  # frozen only while training
    with pytest.raises(ValueError, match="the model has 2 outputs but task 'T3' has 10 labels"):
        train(build("mlp", 1, 2, 8), data, epochs=1, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(build("mlp", 1, 10, 8), data, epochs=1, seed=0, progress=False, epsilon=None)


def test_training_interrupted_mid_way_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch):
    import fisherx.models.training as train_mod

    data = preset("digits")[2].load()
    ckpt = tmp_path / "ckpt.fx"

    def fresh():
        with seeded(1):
            return build("cnn", 1, 5, 8)

    reference = train(fresh(), data, epochs=4, seed=1, progress=False, epsilon=None)
    calls, real_evaluate = [], train_mod.evaluate

    def evaluate_then_die(*args, **kwargs):  # an interrupt during epoch 3's validation
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(fresh(), data, epochs=4, seed=1, progress=False, epsilon=None, checkpoint=ckpt)
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    assert ckpt.is_file()
    resumed = train(fresh(), data, epochs=4, seed=1, progress=False, epsilon=None, checkpoint=ckpt)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == reference.history and resumed.test_accuracy == reference.test_accuracy
    assert all(torch.equal(p, q) for p, q in zip(resumed.model.parameters(), reference.model.parameters(), strict=True))
    with pytest.warns(UserWarning, match="belongs to another training"):
        train(fresh(), data, epochs=1, seed=2, progress=False, epsilon=None, checkpoint=ckpt)
