"""The content-addressed cache: hit, miss, other configuration or format, corrupted and half-written entries."""

from __future__ import annotations

import pytest
import torch

from fisherx.io import cache as cache_mod
from fisherx.io import save_tree
from fisherx.io.cache import Cache, CacheWarning, config_key

CFG = {"arch": "cnn", "seed": 0, "task": {"name": "T0", "classes": ["0"]}, "lr": 1e-3}


def test_miss_then_hit_returns_what_was_stored(tmp_path):
    c = Cache(tmp_path)
    assert c.load("network", CFG) is None
    value = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "summary": {"test_accuracy": 0.9}}
    path = c.store("network", CFG, value)
    assert path.is_file() and path.parent.parent == tmp_path / "network"
    got = c.load("network", dict(reversed(list(CFG.items()))))  # key order does not matter
    assert torch.equal(got["state_dict"]["w"], value["state_dict"]["w"]) and got["summary"] == value["summary"]
    assert c.stats == {"network.miss": 1, "network.store": 1, "network.hit": 1}
    assert c.entries() == [path] and c.entries("fisher") == []


def test_every_part_of_the_configuration_is_in_the_key():
    keys = {
        config_key("network", CFG),
        config_key("fisher", CFG),
        config_key("network", {**CFG, "seed": 1}),
        config_key("network", {**CFG, "lr": 1e-4}),
        config_key("network", {**CFG, "task": {"name": "T0"}}),
    }
    assert len(keys) == 5


def test_get_or_compute_computes_once(tmp_path):
    calls = []
    c = Cache(tmp_path)
    for _ in range(3):
        assert c.get_or_compute("fisher", CFG, lambda: calls.append(1) or {"x": torch.ones(2)})["x"].sum() == 2
    assert len(calls) == 1


def test_entry_of_another_configuration_is_never_used(tmp_path):
    c = Cache(tmp_path)
    other = {**CFG, "seed": 7}
    c.store("network", other, {"v": 1})
    # Put the other configuration's file where this configuration's entry would be (as a collision would).
    c.path("network", CFG).parent.mkdir(parents=True, exist_ok=True)
    c.path("network", other).rename(c.path("network", CFG))
    with pytest.warns(CacheWarning, match="its config differ"):
        assert c.load("network", CFG) is None


def test_entry_of_another_format_is_never_used(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    c.store("network", CFG, {"v": 1})
    old_path = c.path("network", CFG)
    monkeypatch.setattr(cache_mod, "FORMAT_VERSION", cache_mod.FORMAT_VERSION + 1)
    assert c.path("network", CFG) != old_path  # a new format changes every key...
    assert c.load("network", CFG) is None
    c.path("network", CFG).parent.mkdir(parents=True, exist_ok=True)
    old_path.rename(c.path("network", CFG))  # ...and an old entry under the new key is refused all the same
    with pytest.warns(CacheWarning, match="its format differ"):
        assert c.load("network", CFG) is None


def test_corrupted_and_half_written_entries_are_not_read(tmp_path):
    c = Cache(tmp_path)
    p = c.store("fisher", CFG, {"x": torch.ones(100)})
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])  # cut short
    with pytest.warns(CacheWarning, match="unreadable cache entry"):
        assert c.load("fisher", CFG) is None
    c.store("fisher", CFG, {"x": torch.ones(100)})  # recomputed and stored again
    assert c.load("fisher", CFG)["x"].sum() == 100
    # A temporary file left by a write killed half-way is not an entry.
    (p.parent / f".{p.name}.abc.tmp").write_bytes(raw[:20])
    assert c.entries() == [p]


def test_no_root_stores_nothing(tmp_path):
    c = Cache(None)
    assert c.store("network", CFG, {"v": 1}) is None and c.load("network", CFG) is None and c.entries() == []
    with pytest.raises(ValueError, match="cache kind must be an identifier"):
        Cache(tmp_path).path("../x", CFG)


def test_unsaveable_values_are_refused_before_anything_is_written(tmp_path):
    c = Cache(tmp_path)
    with pytest.raises(TypeError, match="cannot be saved without pickle"):
        c.store("network", CFG, {"v": object()})
    assert c.entries() == []
    save_tree(tmp_path / "plain.fx", {"v": 1})  # a fisherx file outside the cache layout is ignored
    assert c.entries() == []
