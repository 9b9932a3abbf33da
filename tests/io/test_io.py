"""The fisherx file format: exact round trips, atomic writes, and refusal of foreign or damaged files."""

import math
import os
import random

import numpy as np
import pytest
import torch

from fisherx import io


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 5, generator=g, dtype=torch.float64),
        "half": torch.randn(7, generator=g).to(torch.bfloat16),
        "mask": torch.rand(4, generator=g) > 0.5,
        "idx": torch.arange(6).reshape(2, 3)[:, ::2],  # non-contiguous
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(2.5),
    }


def test_tensors_round_trip_exactly(tmp_path):
    ts = _tensors()
    p = io.save_tensors(tmp_path / "a.fx", ts, {"model": "MLP", "n": 3})
    back, meta = io.load_tensors(p)
    assert meta == {"model": "MLP", "n": 3}
    assert list(back) == list(ts)
    for k in ts:
        assert back[k].dtype == ts[k].dtype and back[k].shape == ts[k].shape
        assert torch.equal(back[k], ts[k]), k


def test_tree_round_trip_optimizer_and_rng_states(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    obj = {
        "opt": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.Random(3).getstate(),
        "np_rng": np.random.default_rng(5).bit_generator.state,
        "arr": np.arange(4.0),
        "weird": {1: "int key", None: math.inf, "__x": -math.inf, 2.5: (1, [2, None])},
        "nan": math.nan,
    }
    io.save_tree(tmp_path / "t.fx", obj, meta={"round": 3})
    back, meta = io.load_tree(tmp_path / "t.fx", with_meta=True)
    assert meta == {"round": 3}
    assert back["py_rng"] == obj["py_rng"]
    assert back["np_rng"] == obj["np_rng"]
    assert torch.equal(back["torch_rng"], obj["torch_rng"])
    np.testing.assert_array_equal(back["arr"], obj["arr"])
    assert back["weird"][1] == "int key" and back["weird"][None] == math.inf
    assert back["weird"]["__x"] == -math.inf and back["weird"][2.5] == (1, [2, None])
    assert math.isnan(back["nan"])
    # The optimiser state loads into a fresh optimiser and reproduces the next step exactly.
    model2 = torch.nn.Linear(3, 2)
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(back["opt"])
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    assert torch.equal(model.weight, model2.weight)


def test_refuses_unsaveable_values(tmp_path):
    with pytest.raises(TypeError, match=r"obj\['f'\] is a function"):
        io.save_tree(tmp_path / "x.fx", {"f": lambda: 0})
    with pytest.raises(TypeError, match="not plain JSON"):
        io.save_tensors(tmp_path / "x.fx", {}, {"bad": object()})
    assert not (tmp_path / "x.fx").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "empty", "pickle"])
def test_damaged_files_are_refused_with_the_path(tmp_path, damage):
    p = io.save_tensors(tmp_path / "f.fx", _tensors(), {"a": 1})
    raw = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(raw[: len(raw) - 7])
    elif damage == "flip":
        p.write_bytes(raw[:-3] + bytes([raw[-3] ^ 0xFF]) + raw[-2:])
    elif damage == "foreign":
        p.write_bytes(b"PK\x03\x04 not ours" * 10)
    elif damage == "empty":
        p.write_bytes(b"")
    else:
        torch.save({"x": torch.ones(2)}, p)
    with pytest.raises(io.FormatError, match="f.fx"):
        io.load_tensors(p)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fx"):
        io.load_tensors(tmp_path / "nope.fx")


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    p = tmp_path / "keep.txt"
    io.atomic_write_text(p, "old")

    class Boom(Exception):
        pass

    real_fsync = os.fsync

    def failing_fsync(fd):
        raise Boom()

    os.fsync = failing_fsync
    try:
        with pytest.raises(Boom):
            io.atomic_write_text(p, "new")
    finally:
        os.fsync = real_fsync
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["keep.txt"]  # no temporary left behind
