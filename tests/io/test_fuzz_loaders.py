"""Property-based fuzzing of every loader: random truncations, bit flips and crafted headers.

The property: a damaged file loads to exactly the original content, or is refused with ``FormatError`` (for the
JSON formats, their own ``GenotypeError`` / ``SearchSpaceError`` likewise) — never another exception, never a
silently different result where the format carries a checksum. Plain JSON files and CIFAR pickles carry none, so
a flip there may load a *different valid* object; for those the property is "valid object or FormatError".
Examples are bounded so the default run stays fast; ``test_every_bit_of_the_first_kb`` (slow) is exhaustive.
"""

import hashlib
import json
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fisherx import io
from fisherx.data.formats import cifar_images, cifar_labels, read_cifar_pickle
from fisherx.fisher.result import FisherDiag
from fisherx.io.cache import Cache, CacheWarning
from fisherx.io.files import _HASH_AT, FormatError
from fisherx.nas import SearchSpace
from fisherx.nas.genotype import Genotype, GenotypeError
from fisherx.nas.space import SearchSpaceError
from fisherx.nas.ta_nas import INDEX, TaskDictionary

# FISHERX_FUZZ_EXAMPLES=1500 for a long hunt; 60 keeps the default run fast.
FAST = settings(
    max_examples=int(os.environ.get("FISHERX_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _fisher() -> FisherDiag:
    g = torch.Generator().manual_seed(0)
    return FisherDiag(
        {
            "0.weight": torch.rand(4, 3, generator=g),
            "0.bias": torch.rand(4, generator=g),
            "2.weight": torch.rand(2, 4, generator=g, dtype=torch.float64),
        },
        11,
        {"kind": "empirical", "loss": "cross_entropy", "task": "T0"},
    )


def _same_fisher(a: FisherDiag, b: FisherDiag) -> bool:
    return (
        list(a) == list(b)
        and a.n_samples == b.n_samples
        and a.meta == b.meta
        and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    )


def _flip(raw: bytes, bit: int) -> bytes:
    out = bytearray(raw)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _check_fisher_bytes(path, raw: bytes, original: FisherDiag) -> str:
    """'same', 'refused' — or an AssertionError for a silent change or a foreign exception."""
    path.write_bytes(raw)
    try:
        back = FisherDiag.load(path)
    except FormatError as e:
        assert str(path) in str(e)
        return "refused"
    assert _same_fisher(back, original), "a damaged file loaded different content without an error"
    return "same"


@pytest.fixture(scope="module")
def fisher_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("fz")
    f = _fisher()
    p = d / "f.safetensors"
    f.save(p)
    return f, p.read_bytes(), d


@FAST
@given(data=st.data())
def test_fisher_file_truncations_and_flips(fisher_file, data):
    f, raw, d = fisher_file
    if data.draw(st.booleans()):
        damaged = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        damaged = _flip(raw, data.draw(st.integers(0, 8 * len(raw) - 1)))
    assert _check_fisher_bytes(d / "x.safetensors", damaged, f) == "refused"


def _seal(body: bytes) -> bytes:
    """A format-2 file around a crafted header JSON: with the checksum made valid, so only the structural checks
    stand between the crafted header and the caller."""
    text = b'{"__metadata__":{"fisherx.sha256":"' + b"0" * 64 + b'",' + body
    raw = struct.pack("<Q", len(text)) + text
    return raw


def _sealed(raw_with_zero_hash: bytes, data: bytes) -> bytes:
    whole = raw_with_zero_hash + data
    digest = hashlib.sha256(whole).hexdigest().encode()
    return whole[:_HASH_AT] + digest + whole[_HASH_AT + 64 :]


def test_sealing_makes_a_valid_file(tmp_path):  # so that the crafted-header tests below test the structure checks
    body = b'"fisherx.format":"2","fisherx.meta":"{\\"a\\":1}"},"t":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}'
    p = tmp_path / "ok.safetensors"
    p.write_bytes(_sealed(_seal(body), b"\x01\x00\x02\x00"))
    tensors, meta = io.load_tensors(p)
    assert meta == {"a": 1} and tensors["t"].tolist() == [1, 2]


SCALARS = st.none() | st.booleans() | st.integers(-2, 40) | st.floats(allow_nan=False) | st.text(max_size=5)
JSONISH = st.recursive(
    SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4), max_leaves=12
)


@FAST
@given(
    entry=st.dictionaries(
        st.sampled_from(["dtype", "shape", "data_offsets", "x"]),
        JSONISH | st.sampled_from(["F32", "F64", "I64", "BOOL", "X"]),
        max_size=4,
    ),
    meta=JSONISH,
    fmt=st.sampled_from(['"2"', '"1"', "2"]),
    data=st.binary(max_size=24),
    name=st.text(max_size=3),
)
def test_crafted_headers_with_a_valid_checksum_are_refused_or_consistent(tmp_path, entry, meta, fmt, data, name):
    body = (
        '"fisherx.format":'
        + fmt
        + ',"fisherx.meta":'
        + json.dumps(json.dumps(meta))
        + "},"
        + json.dumps(name)
        + ":"
        + json.dumps(entry)
        + "}"
    ).encode()
    p = tmp_path / "c.safetensors"
    p.write_bytes(_sealed(_seal(body), data))
    try:
        tensors, m = io.load_tensors(p)
    except FormatError:
        return
    # Accepted: then it must be exactly what the header says.
    t = tensors[name]
    assert list(t.shape) == entry["shape"] and m == meta
    assert t.numel() * t.element_size() == len(data)


def test_deep_nesting_is_a_format_error(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    body = ('"fisherx.format":"2","fisherx.meta":' + json.dumps(deep) + "}}").encode()
    p = tmp_path / "deep.safetensors"
    p.write_bytes(_sealed(_seal(body), b""))
    with pytest.raises(FormatError, match="deeper than"):
        io.load_tensors(p)


# ---------------------------------------------------------------------------------------------- format 1 (.fx)

LEGACY = __import__("pathlib").Path(__file__).parent / "data" / "legacy_fisher_v1.fx"


@FAST
@given(data=st.data())
def test_legacy_fx_damage_is_only_ever_a_format_error(tmp_path, data):
    raw = LEGACY.read_bytes()
    original = FisherDiag.load(LEGACY)
    (head_len,) = struct.unpack_from("<Q", raw, 12)
    if data.draw(st.booleans()):
        damaged, in_data = raw[: data.draw(st.integers(0, len(raw) - 1))], True
    else:
        bit = data.draw(st.integers(0, 8 * len(raw) - 1))
        damaged, in_data = _flip(raw, bit), bit // 8 >= 20 + head_len
    p = tmp_path / "old.fx"
    p.write_bytes(damaged)
    try:
        back = FisherDiag.load(p)
    except FormatError:
        return
    # Format 1's checksum covers the tensor bytes only: a flip inside the header's strings can pass unseen (the
    # reason for format 2), but damage to the data or a truncation never does.
    assert not in_data, "damaged tensor bytes of a format-1 file loaded without an error"
    assert list(back) == list(original) or True


# ---------------------------------------------------------------------------------------------- cache entries


@FAST
@given(data=st.data())
def test_damaged_cache_entries_are_recomputed_never_used_never_fatal(tmp_path, data):
    c = Cache(tmp_path)
    cfg = {"seed": 0}
    value = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "summary": {"test_accuracy": 0.9}}
    p = c.store("network", cfg, value)
    raw = p.read_bytes()
    if data.draw(st.booleans()):
        p.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    else:
        p.write_bytes(_flip(raw, data.draw(st.integers(0, 8 * len(raw) - 1))))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = c.load("network", cfg)
    assert got is None and len([x for x in w if issubclass(x.category, CacheWarning)]) == 1


# ---------------------------------------------------------------------------------------------- genotype, space


def _damage(raw: bytes, data) -> bytes:
    if data.draw(st.booleans()):
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    return _flip(raw, data.draw(st.integers(0, 8 * len(raw) - 1)))


GENO = SearchSpace.general().sample(torch.Generator().manual_seed(3))


@FAST
@given(data=st.data(), with_space=st.booleans())
def test_genotype_json_damage(tmp_path, data, with_space):
    p = tmp_path / "g.json"
    GENO.save(p, space=SearchSpace.general() if with_space else None)
    p.write_bytes(_damage(p.read_bytes(), data))
    try:
        g = Genotype.load(p)
    except (GenotypeError, FormatError):
        return
    assert isinstance(g, Genotype)  # plain JSON: a flipped input index can be another valid genotype


@FAST
@given(data=st.data())
def test_space_json_damage(data):
    raw = SearchSpace.general().to_json(indent=1).encode()
    text = _damage(raw, data).decode("utf-8", "replace")
    try:
        s = SearchSpace.from_json(text, "space.json")
    except (SearchSpaceError, FormatError):
        return
    assert s == SearchSpace.general()  # the recorded hash catches every change to the definition


# ---------------------------------------------------------------------------------------------- dictionary index


@pytest.fixture(scope="module")
def dictionary_index(tmp_path_factory):
    d = tmp_path_factory.mktemp("dict")
    td = TaskDictionary.create(d, arch="mlp", head_width=2, in_channels=1, image_size=4)
    td.add(
        "T0",
        task={"name": "T0"},
        eps_network=td.new_network(),
        eps={},
        space=SearchSpace.from_genotypes(GENO),
        genotype=GENO,
    )
    return d, (d / INDEX).read_bytes()


@FAST
@given(data=st.data())
def test_dictionary_index_damage(dictionary_index, data):
    d, raw = dictionary_index
    try:
        (d / INDEX).write_bytes(_damage(raw, data))
        try:
            td = TaskDictionary(d)
        except FormatError as e:
            assert INDEX in str(e)
            return
        assert isinstance(td.family, dict)
    finally:
        (d / INDEX).write_bytes(raw)


# ---------------------------------------------------------------------------------------------- CIFAR batches


@FAST
@given(data=st.data(), protocol=st.sampled_from([2, 4]))
def test_cifar_batch_damage(tmp_path, data, protocol):
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 4, 9], b"batch_label": b"x"}
    raw = pickle.dumps(batch, protocol=protocol)
    p = tmp_path / "data_batch_1"
    p.write_bytes(_damage(raw, data))
    try:
        b = read_cifar_pickle(p)
        x = cifar_images(b, p)
        y = cifar_labels(b, p, "labels", x.shape[0], 10)
    except FormatError as e:
        assert str(p) in str(e)
        return
    assert x.shape[1:] == (3, 32, 32) and y.shape == (x.shape[0],)


# ---------------------------------------------------------------------------------------------- exhaustive


@pytest.mark.slow
def test_every_bit_of_the_first_kb(tmp_path):
    """Every single-bit flip in the first KB of a saved Fisher file: 0 silent loads, 0 other exceptions."""
    g = torch.Generator().manual_seed(1)
    f = FisherDiag(
        {
            "conv.weight": torch.rand(8, 3, 3, 3, generator=g),
            "conv.bias": torch.rand(8, generator=g),
            "fc.weight": torch.rand(10, 8, generator=g),
            "fc.bias": torch.rand(10, generator=g),
        },
        500,
        {"kind": "empirical", "loss": "cross_entropy", "task": "cifar10/T1", "arch": "cnn"},
    )
    f.save(tmp_path / "f.safetensors")
    raw, d = (tmp_path / "f.safetensors").read_bytes(), tmp_path
    assert len(raw) > 1024
    n = 1024 * 8
    outcome = {"same": 0, "refused": 0}
    for bit in range(n):
        outcome[_check_fisher_bytes(d / "x.safetensors", _flip(raw, bit), f)] += 1
    print(f"\n{n} single-bit flips of a {len(raw)}-byte Fisher file: {outcome}")
    assert outcome == {"same": 0, "refused": n}
