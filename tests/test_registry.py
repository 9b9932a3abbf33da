"""fisherx._registry.Registry, the one idiom of the tables (rules, metrics, operations, sources, presets)."""

from __future__ import annotations

import pytest
from torch import nn

from fisherx import data
from fisherx._registry import Registry, decorator_for
from fisherx.distance import METRICS
from fisherx.fisher import rules
from fisherx.nas import ops
from fisherx.tasks import presets


def test_register_lookup_and_refusal_to_overwrite():
    r: Registry[str, int] = Registry("colour")
    assert r.register("red", 1) == 1 and r["red"] == 1 and list(r) == ["red"]
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        r.register("red", 2)
    assert r.register("red", 2, replace=True) == 2

    @r.register("blue")
    def blue():
        return 3

    assert r.lookup("blue") is blue
    with pytest.raises(ValueError, match="unknown colour 'green'; choose one of red, blue"):
        r.lookup("green")
    with pytest.raises(ValueError, match="unknown colour"):
        r.lookup(["unhashable"])


def test_decorator_for_several_keys_names_types_in_messages():
    r: Registry[type, object] = Registry("layer rule")
    deco = decorator_for(r, nn.Linear, nn.Bilinear)
    fn = deco(lambda *a: {})
    assert r[nn.Linear] is fn and r[nn.Bilinear] is fn
    with pytest.raises(ValueError, match="layer rule 'Linear' is already registered"):
        decorator_for(r, nn.Linear)(fn)
    with pytest.raises(ValueError, match="unknown layer rule 'Conv2d'; choose one of Linear, Bilinear"):
        r.lookup(nn.Conv2d)


@pytest.mark.parametrize(
    "table, what",
    [
        (rules.RULES, "layer rule"),
        (METRICS, "metric"),
        (ops.OPS, "operation"),
        (data.SOURCES, "data source"),
        (presets.PRESETS, "preset"),
    ],
)
def test_every_table_is_a_registry(table, what):
    assert isinstance(table, Registry) and table.what == what and len(table) > 0
    with pytest.raises(ValueError, match=f"unknown {what}"):
        table.lookup("no such entry")
