"""The NAS search space: operations, cells, genotypes (JSON, text, validation), skeleton, search spaces."""

import json

import pytest
import torch

from fisherx.nas import OP_NAMES, Genotype, GenotypeError, SearchSpace, SearchSpaceError, make_op
from fisherx.nas.network import build as build_network
from fisherx.nas.network import num_params, reduction_positions

G = Genotype(
    normal=[
        [("conv_3x3", 0), ("identity", 1)],
        [("max_pool_3x3", 1), ("conv_5x5", 2)],
        [("zero", 0), ("dil_conv_3x3", 3)],
    ],
    reduce=[
        [("avg_pool_3x3", 0), ("conv_3x3", 1)],
        [("identity", 2), ("conv_7x7", 1)],
        [("conv_7x1_1x7", 3), ("identity", 0)],
        [("dil_conv_5x5", 4), ("zero", 1)],
    ],
)


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine is shared: with its cores oversubscribed, 2-thread OpenMP kernels spin at their barriers
    # and small convolutions run 10-30x slower than on one thread (measured). One thread keeps these tests fast.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_there_are_the_ten_operations_of_the_papers():
    assert len(OP_NAMES) == 10 and len(set(OP_NAMES)) == 10


# One table drives every operation × stride × input size (odd sizes included: ⌈H/2⌉ at stride 2).
@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_operation_output_shape(op, stride, hw):
    torch.manual_seed(0)
    m = make_op(op, 6, stride)
    x = torch.randn(2, 6, *hw, requires_grad=True)
    y = m(x)
    expect = hw if stride == 1 else tuple((s + 1) // 2 for s in hw)
    assert y.shape == (2, 6, *expect), (op, stride, y.shape)
    y.sum().backward()  # differentiable (zero included: gradient exists and is 0)
    assert x.grad is not None and x.grad.shape == x.shape
    if op == "zero":
        assert torch.count_nonzero(y) == 0
    if op == "identity" and stride == 1:
        assert torch.equal(y, x)


def test_make_op_rejects_unknown_names_and_strides():
    with pytest.raises(ValueError, match="unknown operation 'conv_9x9'"):
        make_op("conv_9x9", 4)
    with pytest.raises(ValueError, match="stride"):
        make_op("conv_3x3", 4, stride=3)


def test_genotype_json_round_trip_is_exact(tmp_path):
    s = G.to_json()
    back = Genotype.from_json(s)
    assert back == G and hash(back) == hash(G)
    assert back.to_json() == s
    assert json.loads(s)["format"] == "fisherx.genotype" and json.loads(s)["version"] == 2
    G.save(tmp_path / "g.json")
    assert Genotype.load(tmp_path / "g.json") == G


def test_genotype_text_form_is_readable():
    text = str(G)
    assert text.splitlines()[0].startswith("normal: n0 = conv_3x3(c[k-2]) + identity(c[k-1]);")
    assert "out = concat(n0, n1, n2, n3)" in text.splitlines()[1]


@pytest.mark.parametrize(
    "normal, message",
    [
        ([[("conv_9x9", 0), ("identity", 1)]], "unknown operation 'conv_9x9'"),
        ([[("conv_3x3", 0), ("identity", 1)], [("conv_3x3", 4), ("identity", 1)]], "reads node n2, which comes later"),
        ([[("conv_3x3", 2), ("identity", 1)]], "reads itself"),
        ([[("conv_3x3", 0)]], "has 1 inputs; every node takes exactly 2"),
        ([[("conv_3x3", 0), ("identity", 1), ("zero", 0)]], "has 3 inputs"),
        ([[("conv_3x3", -1), ("identity", 1)]], "negative"),
        ([[("conv_3x3", "0"), ("identity", 1)]], "must be an integer"),
        ([], "no nodes"),
    ],
)
def test_invalid_genotypes_are_rejected_with_the_reason(normal, message):
    with pytest.raises(GenotypeError, match=message):
        Genotype(normal=normal, reduce=G.reduce)


def test_from_json_names_the_source_and_refuses_foreign_or_newer_files():
    d = G.to_dict()
    with pytest.raises(GenotypeError, match="version 3 is not supported"):
        Genotype.from_dict({**d, "version": 3})
    with pytest.raises(GenotypeError, match="not a fisherx genotype"):
        Genotype.from_dict({**d, "format": "darts"})
    bad = {**d, "normal": [[["conv_3x3", 0], ["identity", 5]]]}
    with pytest.raises(GenotypeError, match="my.json: node n0 of the normal cell reads"):
        Genotype.from_json(json.dumps(bad), source="my.json")


def test_parameter_count_matches_the_built_network_and_the_network_runs():
    net = build_network(G, 1, 10, width=8, depth=3)
    assert num_params(G, 1, 10, width=8, depth=3) == sum(p.numel() for p in net.parameters())
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    # Wider networks have more parameters; a cell of parameter-free ops has fewer than one of convolutions.
    assert num_params(G, 1, 10, width=16, depth=3) > num_params(G, 1, 10, width=8, depth=3)
    pools = Genotype([[("max_pool_3x3", 0), ("avg_pool_3x3", 1)]] * 1, [[("max_pool_3x3", 0), ("zero", 1)]])
    convs = Genotype([[("conv_3x3", 0), ("conv_5x5", 1)]], [[("conv_3x3", 0), ("conv_5x5", 1)]])
    assert num_params(pools, 1, 10, 8, 3) < num_params(convs, 1, 10, 8, 3)


def test_skeleton_halves_the_size_in_reduction_cells():
    assert reduction_positions(5) == {1, 3} and reduction_positions(3) == {1, 2}
    net = build_network(G, 3, 4, width=4, depth=5)
    x = net.stem(torch.randn(1, 3, 16, 16))
    s0 = s1 = x
    sizes = []
    for cell in net.cells:
        s0, s1 = s1, cell(s0, s1)
        sizes.append(s1.shape[-1])
    assert sizes == [16, 8, 8, 4, 4]
    with pytest.raises(ValueError, match="width must be even"):
        build_network(G, 1, 10, width=5)


def test_search_space_sampling_is_seeded_valid_and_stays_in_the_space():
    space = SearchSpace(ops=("conv_3x3", "zero", "max_pool_3x3"), nodes=(3,), width=4, depth=3)
    assert space.ops == ("zero", "max_pool_3x3", "conv_3x3")  # canonical order
    a = [space.sample(torch.Generator().manual_seed(1)) for _ in range(2)]
    assert a[0] == a[1]
    rng = torch.Generator().manual_seed(2)
    gs = [space.sample(rng) for _ in range(50)]
    assert all(g in space for g in gs)
    assert all(len(c) == 3 for g in gs for c in (g.normal, g.reduce))
    assert len({g.key() for g in gs}) > 40  # not the same architecture again and again
    assert all(node[0][1] < node[1][1] for g in gs for node in g.normal)  # distinct, ordered inputs
    general = SearchSpace.general()
    assert general.ops == OP_NAMES and general.nodes == (3, 4)
    seen = set().union(*(general.sample(rng).ops() for _ in range(60)))
    assert seen == set(OP_NAMES)


def test_space_derived_from_best_cells_and_its_json():
    best = Genotype(
        [[("conv_3x3", 0), ("identity", 1)]] * 3,
        [
            [("max_pool_3x3", 0), ("conv_3x3", 1)],
            [("identity", 0), ("conv_5x5", 2)],
            [("conv_3x3", 1), ("zero", 3)],
            [("identity", 4), ("conv_3x3", 2)],
        ],
    )
    space = SearchSpace.from_genotypes([best], width=8, depth=3)
    assert space.ops == ("zero", "identity", "max_pool_3x3", "conv_3x3", "conv_5x5") and space.nodes == (3, 4)
    assert best in space and G not in space
    assert SearchSpace.from_genotypes(G).ops == OP_NAMES  # G uses all ten
    other = Genotype([[("conv_7x7", 0), ("identity", 1)]] * 3, [[("identity", 0), ("identity", 1)]] * 3)
    assert other not in space
    assert "conv_7x7" in " ".join(space.violations(other))
    with pytest.raises(SearchSpaceError, match="outside the space"):
        space.check(other)
    assert SearchSpace.from_json(space.to_json()) == space
    assert SearchSpace.from_json(space.to_json()).fingerprint() == space.fingerprint()
    assert space.fingerprint() != SearchSpace.general(width=8, depth=3).fingerprint()
    small = SearchSpace(ops=("zero",), nodes=(3,))
    assert small.num_cells() == 1 * 3 * 6 and small.size() == 18**2
    with pytest.raises(SearchSpaceError, match="unknown operation"):
        SearchSpace(ops=("conv_11x11",))
