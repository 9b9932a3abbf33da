"""Format 2 (checksummed safetensors), format-1 compatibility, permissions, temporaries, FisherDiag as a container."""

import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fisherx import io
from fisherx.fisher.result import FisherDiag
from fisherx.io.cache import Cache, CacheWarning
from fisherx.io.files import STALE_TMP_SECONDS, sweep_stale_temporaries

DATA = Path(__file__).parent / "data"


def _fisher(bootstrap=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    t = {"a.weight": torch.rand(3, 4, generator=g, dtype=dtype), "a.bias": torch.rand(3, generator=g, dtype=dtype)}
    if not bootstrap:
        return FisherDiag(t, 9, {"kind": "empirical", "loss": "cross_entropy"})
    reps = {k: torch.rand(5, *v.shape, generator=g, dtype=dtype) for k, v in t.items()}
    return FisherDiag(
        t, 9, {"kind": "empirical"}, replicates=reps, replicate_weights=torch.rand(5, dtype=torch.float64)
    )


def test_files_are_safetensors_that_other_readers_open(tmp_path):
    ts = {
        "w": torch.randn(3, 5, dtype=torch.float64),
        "i": torch.arange(7, dtype=torch.int16),
        "h": torch.randn(4).to(torch.bfloat16),
        "m": torch.rand(5) > 0.5,
        "e": torch.empty(0, 2),
    }
    p = io.save_tensors(tmp_path / "t.safetensors", ts, {"task": "T0", "n": [1, 2]})
    other = load_file(p)
    assert set(other) == set(ts) and all(torch.equal(other[k], ts[k]) for k in ts)
    with safe_open(str(p), "pt") as f:
        md = f.metadata()
    assert md["fisherx.format"] == "2" and len(md["fisherx.sha256"]) == 64 and '"task":"T0"' in md["fisherx.meta"]
    back, meta = io.load_tensors(p)
    assert list(back) == list(ts) and meta == {"task": "T0", "n": [1, 2]}
    for k in ts:  # every tensor aligned to its element size inside the one buffer the file was read into
        assert back[k].data_ptr() % back[k].element_size() == 0 or back[k].numel() == 0


@pytest.mark.parametrize("bootstrap", [False, True])
def test_fisher_round_trip_and_interop(tmp_path, bootstrap):
    f = _fisher(bootstrap)
    f.save(tmp_path / "f.safetensors")
    g = FisherDiag.load(tmp_path / "f.safetensors")
    assert list(g) == list(f) and g.n_samples == 9 and g.meta == f.meta and g.n_replicates == f.n_replicates
    assert all(torch.equal(g[k], f[k]) for k in f)
    assert torch.equal(load_file(tmp_path / "f.safetensors")["a.weight"], f["a.weight"])  # plain names


def test_format_1_fixtures_written_before_the_change_still_read():
    g = torch.Generator().manual_seed(0)
    w, b = torch.rand(3, 2, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64)
    f = FisherDiag.load(DATA / "legacy_fisher_v1.fx")
    assert list(f) == ["0.weight", "0.bias"] and f.n_samples == 7 and f.meta["task"] == "fixture"
    assert torch.equal(f["0.weight"], w) and torch.equal(f["0.bias"], b)
    tree, meta = io.load_tree(DATA / "legacy_tree_v1.fxc", with_meta=True)
    assert tree == {"net": {"w": tree["net"]["w"]}, "acc": 0.5, "t": (1, None)} and meta["kind"] == "network"
    assert torch.equal(tree["net"]["w"], torch.arange(4.0))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_get_the_permissions_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        a = io.atomic_write_text(tmp_path / "a.txt", "x")
        b = io.save_tensors(tmp_path / "sub" / "b.safetensors", {"x": torch.ones(2)})
    finally:
        os.umask(old)
    assert oct(a.stat().st_mode & 0o777) == oct(0o666 & ~umask)
    assert oct(b.stat().st_mode & 0o777) == oct(0o666 & ~umask)
    assert oct(b.parent.stat().st_mode & 0o777) == oct(0o777 & ~umask)


def test_stale_temporaries_are_swept_by_the_next_write(tmp_path):
    stale = tmp_path / ".f.safetensors.a1b2c3d4.tmp"  # what a writer killed mid-write leaves
    fresh = tmp_path / ".g.safetensors.e5f6a7b8.tmp"  # a writer still at work
    mine = tmp_path / ".notes.tmp"  # not a fisherx temporary name: never touched
    for p in (stale, fresh, mine):
        p.write_bytes(b"partial")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(mine, (old, old))
    io.atomic_write_text(tmp_path / "other.txt", "x")
    assert not stale.exists() and fresh.exists() and mine.exists()
    assert sweep_stale_temporaries(tmp_path, older_than=-1) == [fresh]


def test_a_failed_write_names_the_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="file"):
        io.atomic_write_text(tmp_path / "file" / "under" / "out.txt", "x")


def test_cache_entry_the_caller_cannot_use_is_recomputed_with_one_warning(tmp_path):
    c = Cache(tmp_path)
    c.store("network", {"s": 0}, {"w": torch.ones(3)})
    net = torch.nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert c.load("network", {"s": 0}, check=net.load_state_dict) is None
    assert [str(x.message) for x in w if x.category is CacheWarning][0].count("does not fit") == 1
    assert c.stats["network.rejected"] == 1 and c.load("network", {"s": 0})["w"].sum() == 3


# ---------------------------------------------------------------------------------------------- FisherDiag


def test_fisher_moves_and_casts_like_a_tensor_container():
    f = _fisher(bootstrap=True)
    d = f.double()
    assert d.dtype == torch.float64 and all(v.dtype == torch.float64 for v in d.replicates.values())
    assert d.float().dtype == torch.float32 and d.cpu().device.type == "cpu"
    assert f.to(torch.float16).dtype == torch.float16
    assert list(d) == list(f) and d.n_samples == f.n_samples and d.meta == f.meta
    torch.testing.assert_close(d.flat(), f.flat().double())


def test_state_dict_round_trip_through_torch_save_weights_only(tmp_path):
    f = _fisher(bootstrap=True)
    torch.save(f.state_dict(), tmp_path / "s.pt")
    g = FisherDiag.from_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert list(g) == list(f) and g.n_samples == f.n_samples and g.n_replicates == 5
    assert torch.equal(g.replicates_flat(), f.replicates_flat())
    with pytest.raises(ValueError, match="not a FisherDiag state dict"):
        FisherDiag.from_state_dict({"tensors": {}})


def test_arithmetic_keeps_the_layout_and_refuses_another():
    f, g = _fisher(), _fisher().double().float() * 3
    for out, ref in (
        ((f + g), f.flat() + g.flat()),
        ((f - g), f.flat() - g.flat()),
        ((f * g), f.flat() * g.flat()),
        ((f / g), f.flat() / g.flat()),
        ((2 * f), 2 * f.flat()),
        ((f / 4), f.flat() / 4),
        ((1 - f), 1 - f.flat()),
        ((1 / g), 1 / g.flat()),
        ((-f), -f.flat()),
        ((f + 0.5), f.flat() + 0.5),
    ):
        assert isinstance(out, FisherDiag) and list(out) == list(f)
        assert [v.shape for v in out.values()] == [v.shape for v in f.values()]
        torch.testing.assert_close(out.flat(), ref)
    other = FisherDiag({"a.weight": torch.rand(3, 5), "a.bias": torch.rand(3)}, 2)
    with pytest.raises(ValueError, match=r"shape mismatch a\.weight"):
        f + other
    with pytest.raises(ValueError, match=r"only in other: b"):
        f * FisherDiag({"a.weight": torch.rand(3, 4), "a.bias": torch.rand(3), "b": torch.rand(1)}, 2)
    with pytest.raises(TypeError):
        f + "x"
    assert (f * 2).replicates is None


def test_loaded_tensors_each_own_their_storage(tmp_path):
    # A tensor placed after others in the file must still work where torch reads a storage from its start (the
    # generator state below used to crash when the tensors were views into one shared storage).
    g = torch.Generator().manual_seed(4)
    io.save_tree(tmp_path / "t.fx", {"before": torch.arange(5.0), "gen": g.get_state()})
    back = io.load_tree(tmp_path / "t.fx")
    assert back["gen"].storage_offset() == 0 and back["gen"].untyped_storage().nbytes() == g.get_state().numel()
    h = torch.Generator()
    h.set_state(back["gen"])
    assert torch.equal(torch.rand(4, generator=h), torch.rand(4, generator=g))
