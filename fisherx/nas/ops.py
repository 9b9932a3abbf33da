"""The ten cell operations of the task-aware NAS search space (docs/nas.md), in their DARTS forms.

Every operation maps (N, C, H, W) to (N, C, H, W) at stride 1 and to (N, C, ⌈H/2⌉, ⌈W/2⌉) at stride 2 (used on the
edges that read the cell inputs of a reduction cell). Paddings are chosen so that ``⌊(H + 2p − d(k−1) − 1)/s⌋ + 1``
equals H at s = 1 and ⌈H/2⌉ at s = 2 for every kernel size k and dilation d used here.

- ``zero``: the constant 0 (the edge is absent), subsampled at stride 2.
- ``identity``: x at stride 1; a factorised reduce at stride 2 (two 1×1 stride-2 convolutions, the second on the
  input shifted by one pixel, concatenated on channels, BatchNorm), because a pure subsample would drop 3/4 of
  the pixels with no learnable mixing.
- ``max_pool_3x3``, ``avg_pool_3x3``: 3×3 pooling, padding 1 (average excludes the padding).
- ``conv_3x3``, ``conv_5x5``, ``conv_7x7``: separable convolutions, (ReLU, depthwise k×k, pointwise 1×1,
  BatchNorm) applied twice, the stride on the first depthwise convolution.
- ``dil_conv_3x3``, ``dil_conv_5x5``: ReLU, depthwise k×k with dilation 2, pointwise 1×1, BatchNorm.
- ``conv_7x1_1x7``: ReLU, 1×7 convolution, 7×1 convolution, BatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .._registry import Registry

#: The operation names in the order of the papers' list; this order is also the canonical order of a search space.
OP_NAMES: tuple[str, ...] = (
    "zero",
    "identity",
    "max_pool_3x3",
    "avg_pool_3x3",
    "conv_3x3",
    "conv_5x5",
    "conv_7x7",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "conv_7x1_1x7",
)


class Zero(nn.Module):
    """The absent edge: zeros of the output shape (x·0 keeps dtype, device and the autograd graph valid)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FactorizedReduce(nn.Module):
    """Halve H and W, c_in → c_out channels: ReLU, two 1×1 stride-2 convolutions (one on x, one on x shifted by a
    pixel) concatenated, BatchNorm. Odd sizes are padded on the bottom/right first so both halves have ⌈H/2⌉ rows."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        h, w = x.shape[-2:]
        # Shift by one pixel; odd sizes get one row/column of zero padding first so that both halves come out with
        # ⌈H/2⌉ rows (an even H−1-row shifted copy also maps to H/2 under a stride-2 1×1 convolution).
        shifted = F.pad(x, (0, w % 2, 0, h % 2))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class ReLUConvBN(nn.Module):
    """ReLU, k×k convolution, BatchNorm: the cell's input preprocessing (k = 1)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, depthwise k×k convolution with dilation d, pointwise 1×1, BatchNorm."""

    def __init__(self, c: int, kernel_size: int, stride: int, padding: int, dilation: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """The DARTS separable convolution: DilConv with dilation 1, applied twice (stride on the first)."""

    def __init__(self, c: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            DilConv(c, kernel_size, stride, padding, 1, affine),
            DilConv(c, kernel_size, 1, padding, 1, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Conv7x1_1x7(nn.Module):
    """ReLU, 1×7 convolution (stride on W), 7×1 convolution (stride on H), BatchNorm."""

    def __init__(self, c: int, stride: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(c, c, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(c, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _pool(kind: str, stride: int) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


#: name → factory(channels, stride, affine) → module.
OPS: Registry[str, Callable[[int, int, bool], nn.Module]] = Registry(
    "operation",
    {
        "zero": lambda c, s, affine: Zero(s),
        "identity": lambda c, s, affine: Identity() if s == 1 else FactorizedReduce(c, c, affine),
        "max_pool_3x3": lambda c, s, affine: _pool("max", s),
        "avg_pool_3x3": lambda c, s, affine: _pool("avg", s),
        "conv_3x3": lambda c, s, affine: SepConv(c, 3, s, 1, affine),
        "conv_5x5": lambda c, s, affine: SepConv(c, 5, s, 2, affine),
        "conv_7x7": lambda c, s, affine: SepConv(c, 7, s, 3, affine),
        "dil_conv_3x3": lambda c, s, affine: DilConv(c, 3, s, 2, 2, affine),
        "dil_conv_5x5": lambda c, s, affine: DilConv(c, 5, s, 4, 2, affine),
        "conv_7x1_1x7": lambda c, s, affine: Conv7x1_1x7(c, s, affine),
    },
)
assert tuple(OPS) == OP_NAMES

#: Each operation's version: bump an operation's entry when its computation changes (a file that used the old
#: version is then refused, naming the operation). Operations not listed here are at version 1.
OP_VERSIONS: dict[str, int] = {name: 1 for name in OP_NAMES}

#: The operation set: its name, the version of this record, and the operations. Genotype and search-space files
#: record it (plus ``op_versions`` for operations past version 1), so a file is never read against operations of
#: other semantics; a file is readable when every operation it lists exists here at the version it recorded, so
#: adding an operation (:func:`register_op`) keeps every older file readable.
OPSET = {"name": "fisherx.darts-ops", "version": 1, "ops": list(OP_NAMES)}


def register_op(name: str, factory: Callable[[int, int, bool], nn.Module], version: int = 1) -> None:
    """Add operation ``name``: ``factory(channels, stride, affine)`` returns the module (stride 1 keeps the size,
    stride 2 halves it). New files record it; files written before it stay readable."""
    global OP_NAMES
    if name in OPS:
        raise ValueError(f"operation {name!r} exists already; bump OP_VERSIONS[{name!r}] to change its computation")
    OPS.register(name, factory)
    OP_VERSIONS[name] = int(version)
    OP_NAMES = (*OP_NAMES, name)
    OPSET["ops"].append(name)


def opset_record() -> dict:
    """The operation set as files record it (a fresh dict)."""
    rec = {"name": OPSET["name"], "version": OPSET["version"], "ops": list(OPSET["ops"])}
    later = {op: v for op, v in OP_VERSIONS.items() if v != 1}
    if later:
        rec["op_versions"] = later
    return rec


def check_opset_record(opset, source: str) -> str | None:
    """None when a file's recorded operation set can be read here, else what is wrong (one sentence)."""
    if not isinstance(opset, dict) or "name" not in opset or "version" not in opset:
        return (
            f"{source}: the operation set is missing or malformed (expected "
            f"{{'name': {OPSET['name']!r}, 'version': {OPSET['version']}}})"
        )
    if (opset["name"], opset["version"]) != (OPSET["name"], OPSET["version"]):
        return (
            f"{source}: written for operation set {opset['name']!r} version {opset['version']!r}; "
            f"this fisherx has {OPSET['name']!r} version {OPSET['version']}"
        )
    ops = opset.get("ops", OPSET["ops"])
    unknown = [op for op in ops if op not in OPS] if isinstance(ops, list) else ops
    if unknown:
        return (
            f"{source}: its operation set {opset['name']!r} lists the operations {unknown}, which this fisherx "
            f"does not have (operations: {', '.join(OP_NAMES)}): a newer fisherx wrote it, or it was edited"
        )
    versions = opset.get("op_versions", {})
    changed = [
        f"{op} (file: version {versions.get(op, 1)}, here: {OP_VERSIONS.get(op, 1)})"
        for op in ops
        if (versions.get(op, 1) if isinstance(versions, dict) else None) != OP_VERSIONS.get(op, 1)
    ]
    if changed:
        return (
            f"{source}: written with other versions of the operations {', '.join(changed)}: the same names "
            "compute something else now"
        )
    return None


def make_op(name: str, channels: int, stride: int = 1, affine: bool = True) -> nn.Module:
    """Build operation ``name`` on ``channels`` channels; ``stride`` is 1 (keep the size) or 2 (halve it)."""
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; the operations are {', '.join(OP_NAMES)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    return OPS[name](channels, stride, affine)
