"""The recipes of docs/architecture.md, each done once by a test (add a metric; add an operation is below)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fisherx
from fisherx import distance
from fisherx.experiments import metrics
from fisherx.tasks import preset


def test_the_experiment_layer_reads_a_metric_by_name():
    assert metrics.kind("ftd") == "distance" and metrics.self_value("ftd") == 0.0
    assert metrics.kind("cosine") == "similarity" and metrics.self_value("cosine") == 1.0
    assert metrics.pick_closest("cosine") is np.argmax and metrics.worst("ftd") == np.inf


@pytest.mark.skipif(
    not hasattr(distance, "register_metric"),
    reason="the metric table (fisherx.distance.register_metric) is not in this tree yet",
)
def test_add_a_metric(tmp_path):
    """One registry entry: a similarity (negated FTD + 1, so 1 on the diagonal) runs through task_distances."""
    ftd = distance.get_metric("ftd")

    def column(rows, target, sigma2, normalize, source_name, target_name):
        return 1.0 - ftd.column(rows, target, sigma2, normalize, source_name, target_name)

    def reference(s, t, sigma2, normalize):
        return 1.0 - ftd.reference(s, t, sigma2, normalize)

    distance.register_metric(distance.Metric("one_minus_ftd", column, "similarity", 1.0, (0.0, 1.0), reference))
    try:
        tasks = preset("digits")[:3]
        args = dict(
            archs=["mlp"], seeds=[0], epochs=2, epsilon=None, fisher_samples=100, progress=False, cache_dir=tmp_path
        )
        new = fisherx.task_distances(tasks, metric="one_minus_ftd", **args)
        old = fisherx.task_distances(tasks, metric="ftd", **args)  # the same cached networks and Fishers
        assert np.allclose(new.mean(), 1.0 - old.mean(), atol=1e-12)
        assert np.all(np.diag(new.mean()) == 1.0)
        # A similarity: the closest source is the largest value, and that is the FTD's smallest.
        assert new.closest() == old.closest()
        assert "one_minus_ftd similarity" in new.table()
    finally:
        distance.METRICS.pop("one_minus_ftd", None)


@pytest.fixture
def restore_ops():
    """Undo register_op after the test: the op table is process-wide."""
    from fisherx.nas import ops

    saved = dict(ops.OPS), dict(ops.OP_VERSIONS), ops.OP_NAMES, list(ops.OPSET["ops"])
    yield ops
    ops.OPS.clear()
    ops.OPS.update(saved[0])
    ops.OP_VERSIONS.clear()
    ops.OP_VERSIONS.update(saved[1])
    ops.OP_NAMES = saved[2]
    ops.OPSET["ops"][:] = saved[3]


def test_add_an_operation_keeps_older_files_readable(restore_ops, tmp_path):
    """docs/architecture.md's recipe: one register_op call; genotype and space files written before still read."""
    import torch
    from torch import nn

    from fisherx.nas import Genotype, GenotypeError, SearchSpace, SearchSpaceError
    from fisherx.nas.network import build

    ops = restore_ops
    cell = [[("conv_3x3", 0), ("identity", 1)], [("max_pool_3x3", 0), ("conv_5x5", 2)], [("conv_3x3", 2), ("zero", 3)]]
    g = Genotype(cell, cell)
    space = SearchSpace.general(width=4, depth=2)
    old_genotype = g.to_json(space=space)
    old_space = space.to_json()

    def conv_1x1(c, stride, affine):
        return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1, stride=stride, bias=False), nn.BatchNorm2d(c, affine=affine))

    ops.register_op("conv_1x1", conv_1x1)
    assert Genotype.from_json(old_genotype) == g  # written before the operation existed
    assert SearchSpace.from_json(old_space).ops == space.ops
    new = Genotype([[("conv_1x1", 0), ("identity", 1)], *cell[1:]], cell)
    general = SearchSpace.general(width=4, depth=2)
    assert "conv_1x1" in general.ops and general.fingerprint() != space.fingerprint()
    assert Genotype.from_json(new.to_json(space=general)) == new
    assert build(new, 1, 5, width=4, depth=2)(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    # Changing an operation's computation is a version bump: files that used the old one are refused by name.
    ops.OP_VERSIONS["conv_3x3"] = 2
    with pytest.raises(GenotypeError, match="conv_3x3 .file: version 1, here: 2"):
        Genotype.from_json(old_genotype)
    ops.OP_VERSIONS["conv_3x3"] = 1
    with pytest.raises(ValueError, match="exists already"):
        ops.register_op("conv_1x1", conv_1x1)
    # A file from a fisherx with more operations is refused, naming what is missing here.
    future = json.loads(new.to_json())
    restore_ops.OPS.pop("conv_1x1")
    with pytest.raises(GenotypeError, match="lists the operations \\['conv_1x1'\\]"):
        Genotype.from_dict(future)
    with pytest.raises(SearchSpaceError, match="conv_1x1"):
        SearchSpace.from_json(general.to_json())
