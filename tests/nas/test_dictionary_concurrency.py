"""The TA-NAS dictionary under concurrent writers: read-merge-write under an inter-process lock loses nothing."""

import multiprocessing as mp

import pytest
import torch

from fisherx.nas import SearchSpace
from fisherx.nas.ta_nas import TaskDictionary

FAMILY = dict(arch="mlp", head_width=2, in_channels=1, image_size=4)


def _adder(path, names, start):
    start.wait()  # every worker begins at once, so their adds interleave
    d = TaskDictionary.create(path, **FAMILY, exist_ok=True)  # creation races too: all but one open it
    g = SearchSpace.general().sample(torch.Generator().manual_seed(0))
    space = SearchSpace.from_genotypes(g)
    for name in names:
        d.add(name, task={"name": name}, eps_network=d.new_network(), eps={}, space=space, genotype=g)


def test_twenty_concurrent_adds_from_four_processes_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    names = [f"T{i}" for i in range(20)]
    procs = [ctx.Process(target=_adder, args=(tmp_path, names[k::4], start)) for k in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    d = TaskDictionary(tmp_path)
    assert sorted(d.names()) == sorted(names)  # 0 lost entries
    for n in names:  # and every entry's files are there and load
        d.eps_network(n)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(names)  # no orphaned folder


def test_the_same_baseline_added_by_two_runs_keeps_the_first(tmp_path):
    a = TaskDictionary.create(tmp_path, **FAMILY)
    b = TaskDictionary.create(tmp_path, **FAMILY, exist_ok=True)  # a second, identical run
    g = SearchSpace.general().sample(torch.Generator().manual_seed(0))
    space = SearchSpace.from_genotypes(g)
    first = a.add("T0", task={"by": "a"}, eps_network=a.new_network(), eps={}, space=space, genotype=g)
    again = b.add("T0", task={"by": "b"}, eps_network=b.new_network(), eps={}, space=space, genotype=g)
    assert again.task == first.task == {"by": "a"}
    assert TaskDictionary(tmp_path)["T0"].task == {"by": "a"}
    with pytest.raises(ValueError, match="already has a baseline 'T0'"):  # a deliberate duplicate still is refused
        b.add("T0", task={}, eps_network=b.new_network(), eps={}, space=space, genotype=g)


def test_create_with_exist_ok_refuses_another_family(tmp_path):
    TaskDictionary.create(tmp_path, **FAMILY)
    with pytest.raises(ValueError, match="another family.*head_width"):
        TaskDictionary.create(tmp_path, **{**FAMILY, "head_width": 3}, exist_ok=True)
    with pytest.raises(FileExistsError):
        TaskDictionary.create(tmp_path, **FAMILY)
