"""The recipes of docs/architecture.md, each done once by a test (add a metric; add an operation is below)."""
from __future__ import annotations

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


@pytest.mark.skipif(not hasattr(distance, "register_metric"),
                    reason="the metric table (fisherx.distance.register_metric) is not in this tree yet")
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
        args = dict(archs=["mlp"], seeds=[0], epochs=2, epsilon=None, fisher_samples=100, progress=False,
                    cache_dir=tmp_path)
        new = fisherx.task_distances(tasks, metric="one_minus_ftd", **args)
        old = fisherx.task_distances(tasks, metric="ftd", **args)  # the same cached networks and Fishers
        assert np.allclose(new.mean(), 1.0 - old.mean(), atol=1e-12)
        assert np.all(np.diag(new.mean()) == 1.0)
        # A similarity: the closest source is the largest value, and that is the FTD's smallest.
        assert new.closest() == old.closest()
        assert "one_minus_ftd similarity" in new.table()
    finally:
        distance.METRICS.pop("one_minus_ftd", None)
