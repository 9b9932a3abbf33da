"""Portable architectures: the versioned genotype/space JSON (operation set, space hash), and the DARTS and
NAS-Bench-201 converters (round trips, and a clear refusal for what one side cannot express)."""

import collections
import itertools
import json

import pytest
import torch
from test_nas_space import _one_thread  # noqa: F401  (autouse: every test here runs on one thread)

from fisherx.nas import Genotype, GenotypeError, SearchSpace, SearchSpaceError
from fisherx.nas.formats import ConversionError, from_darts, from_nb201, to_darts, to_darts_text, to_nb201
from fisherx.nas.network import build as build_network
from fisherx.nas.ops import OPSET

# DARTS (second order), as printed in the DARTS repository's genotypes.py.
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=range(2, 6))"
)


def _general_samples(n=40, seed=0):
    rng = torch.Generator().manual_seed(seed)
    return [SearchSpace.general().sample(rng) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ fisherx JSON


def test_genotype_file_records_the_operation_set_and_the_space_with_its_hash(tmp_path):
    space = SearchSpace.general(width=8, depth=3)
    g = _general_samples(1)[0]
    d = json.loads(g.to_json(space=space))
    assert d["version"] == 2 and d["opset"] == OPSET and len(OPSET["ops"]) == 10
    assert d["space"]["hash"] == space.fingerprint() and d["space"]["opset"]["name"] == OPSET["name"]
    g.save(tmp_path / "g.json", space=space)
    back, sp = Genotype.load_with_space(tmp_path / "g.json")
    assert back == g and sp == space and sp.fingerprint() == space.fingerprint()
    assert Genotype.load(tmp_path / "g.json") == g

    # A space whose definition no longer matches its hash (edited by hand, damaged) is refused.
    d["space"]["width"] = 16
    with pytest.raises(GenotypeError, match="does not match the space's definition"):
        Genotype.from_dict(d, source="edited.json")
    # A genotype cannot be written with, or read against, a space it is outside of.
    small = SearchSpace(ops=("zero", "identity"), nodes=(3,))
    with pytest.raises(SearchSpaceError, match="outside the space"):
        g.to_dict(space=small)
    bad = {**json.loads(g.to_json()), "space": small.to_dict()}
    with pytest.raises(GenotypeError, match="outside the space"):
        Genotype.from_dict(bad)
    # Another operation set: the same names might compute something else.
    with pytest.raises(GenotypeError, match="operation set 'other-ops' version 1"):
        Genotype.from_dict({**json.loads(g.to_json()), "opset": {"name": "other-ops", "version": 1}})
    renamed = {**OPSET, "ops": ["nothing", *OPSET["ops"][1:]]}
    with pytest.raises(GenotypeError, match="lists the operations"):
        Genotype.from_dict({**json.loads(g.to_json()), "opset": renamed})


def test_version_1_files_are_still_read():
    g = _general_samples(1)[0]
    v1 = {
        "format": "fisherx.genotype",
        "version": 1,
        "normal": [[list(e) for e in n] for n in g.normal],
        "reduce": [[list(e) for e in n] for n in g.reduce],
    }
    assert Genotype.from_dict(v1) == g
    with pytest.raises(GenotypeError, match="unexpected keys"):
        Genotype.from_dict({**v1, "opset": {}})  # version 1 had no operation set
    space = SearchSpace.general(width=8, depth=3)
    sv1 = {
        "format": "fisherx.search_space",
        "version": 1,
        "name": "x",
        "ops": list(space.ops),
        "nodes": list(space.nodes),
        "width": 8,
        "depth": 3,
        "stem_multiplier": 3,
    }
    assert SearchSpace.from_dict(sv1) == space
    with pytest.raises(SearchSpaceError, match="hash"):
        SearchSpace.from_dict({**space.to_dict(), "hash": "0" * 16})


# ------------------------------------------------------------------------------------------------------- DARTS


def test_darts_round_trip_of_any_genotype():
    Darts = collections.namedtuple("Genotype", "normal normal_concat reduce reduce_concat")
    for g in _general_samples():
        d = to_darts(g)
        assert len(d["normal"]) == 2 * len(g.normal) and d["normal_concat"] == list(range(2, 2 + len(g.normal)))
        assert from_darts(d) == g
        assert from_darts(to_darts_text(g)) == g
        assert from_darts(Darts(**d)) == g  # DARTS's own namedtuple, duck-typed


def test_a_published_darts_genotype_converts_and_builds():
    g = from_darts(DARTS_V2)
    assert g.normal[0] == (("conv_3x3", 0), ("conv_3x3", 1)) and g.normal[3] == (("identity", 0), ("dil_conv_3x3", 2))
    assert g.reduce[1] == (("identity", 2), ("max_pool_3x3", 1)) and len(g.reduce) == 4
    assert to_darts_text(g) == DARTS_V2.replace("range(2, 6)", "[2, 3, 4, 5]")
    assert build_network(g, 3, 10, width=4, depth=2)(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 5]"),
            r"normal_concat is \[2, 3, 5\], but fisherx cells concatenate all their nodes .*states \[4\]",
        ),
        (DARTS_V2.replace("'dil_conv_3x3'", "'conv_9x9'"), "operation 'conv_9x9' has no fisherx counterpart"),
        ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[])", "even"),
        (
            "Genotype(normal=__import__('os').getcwd(), normal_concat=[], reduce=[], reduce_concat=[])",
            "only literals and range",
        ),
        (
            "Genotype(normal=[('none', 0), ('none', 2)], normal_concat=[2], reduce=[('none', 0), ('none', 1)], "
            "reduce_concat=[2])",
            "not a valid cell DAG: node n0 of the normal cell reads itself",
        ),
        ("not python (", "not a DARTS genotype text"),
    ],
)
def test_darts_forms_fisherx_cannot_express_are_refused_with_the_reason(text, message):
    with pytest.raises(ConversionError, match=message):
        from_darts(text)


# ----------------------------------------------------------------------------------------------- NAS-Bench-201


def test_nb201_round_trip_over_every_expressible_cell():
    ops = ("none", "skip_connect", "avg_pool_3x3")
    converted = refused = 0
    for e in itertools.product(ops, repeat=6):
        s = f"|{e[0]}~0|+|{e[1]}~0|{e[2]}~1|+|{e[3]}~0|{e[4]}~1|{e[5]}~2|"
        if all(op != "none" for op in e[3:]):
            with pytest.raises(ConversionError, match="node 3 adds 3 operations"):
                from_nb201(s)
            refused += 1
            continue
        g = from_nb201(s)
        assert g.normal == g.reduce and len(g.normal) == 3
        assert to_nb201(g) == s and to_nb201(g, "reduce") == s
        assert from_nb201(to_nb201(g)) == g
        converted += 1
    assert (converted, refused) == (3**6 - 3**3 * 8, 3**3 * 8)


def test_nb201_edges_land_on_the_matching_fisherx_inputs():
    g = from_nb201("|skip_connect~0|+|none~0|avg_pool_3x3~1|+|avg_pool_3x3~0|none~1|skip_connect~2|")
    # x0 = c[k-1] (input 1), x1 = n0 (input 2), x2 = n1 (input 3); a lone operation gets zero on c[k-2].
    assert g.normal == (
        (("zero", 0), ("identity", 1)),
        (("zero", 0), ("avg_pool_3x3", 2)),
        (("avg_pool_3x3", 1), ("identity", 3)),
    )
    assert build_network(g, 1, 5, width=4, depth=1)(torch.randn(2, 1, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize(
    "arch, message",
    [
        ("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "nor_conv_3x3 .* full 3×3 convolution"),
        ("|none~0|+|nor_conv_1x1~0|none~1|+|none~0|none~1|none~2|", "node 2, edge from node 0: nor_conv_1x1"),
        ("|none~0|+|none~0|none~1|", "expected three nodes"),
        ("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|", "node 2 must have one edge from each of nodes 0..1"),
        ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown NAS-Bench-201 operation 'conv'"),
    ],
)
def test_nb201_strings_fisherx_cannot_express_are_refused_with_the_reason(arch, message):
    with pytest.raises(ConversionError, match=message):
        from_nb201(arch)


@pytest.mark.parametrize(
    "normal, message",
    [
        ([[("zero", 0), ("identity", 1)]] * 4, "has 4 nodes; a NAS-Bench-201 cell has exactly 3"),
        ([[("identity", 0), ("identity", 1)]] * 3, "applies identity to c\\[k-2\\]; a NAS-Bench-201 cell has a single"),
        ([[("zero", 0), ("conv_3x3", 1)]] * 3, "uses conv_3x3, which has no NAS-Bench-201 counterpart"),
        ([[("zero", 0), ("max_pool_3x3", 1)]] * 3, "uses max_pool_3x3"),
        ([[("avg_pool_3x3", 1), ("identity", 1)]] * 3, "two operations to the same input"),
    ],
)
def test_fisherx_cells_nb201_cannot_express_are_refused_with_the_reason(normal, message):
    g = Genotype(normal, [[("zero", 0), ("zero", 1)]] * 3)
    with pytest.raises(ConversionError, match=message):
        to_nb201(g)
    assert to_nb201(g, "reduce") == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
