"""CPU path choice for the Fisher engine (docs/benchmarks.md): the fused C++ kernel with implicit im2col vs a tiled
torch path (unfold a chunk of the batch, bmm, square, sum), per VGG-11 conv layer at batch 256, one thread; then,
for depthwise convolutions, the kernel vs the folded path the conv rule takes for thin groups.

    python bench/fisher_cpu_path.py
"""

import time

import torch
import torch.nn as nn

from fisherx import _ops
from fisherx.fisher.rules.conv import _folded, unfold
from fisherx.fisher.rules.norm import _row_stats

torch.set_num_threads(1)
B = 256


def torch_tiled(layer, x, g, chunk):
    b = x.shape[0]
    acc = None
    go = g.reshape(b, 1, g.shape[1], -1).transpose(2, 3)
    for s in range(0, b, chunk):
        u = unfold(x[s : s + chunk], layer)  # (c, 1, L, K)
        w = torch.matmul(go[s : s + chunk].transpose(2, 3), u)  # (c, 1, M, K) per-sample grads (a tile)
        part = w.square_().sum(0)
        acc = part if acc is None else acc.add_(part)
    return acc


rows = []
_ops.sqgrad_gemm(
    torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 5)
)  # the first custom-op call pays a one-time torch.library set-up
for cin, cout, hw in [(3, 64, 32), (64, 128, 16), (256, 256, 8), (512, 512, 4), (512, 512, 2)]:
    layer = nn.Conv2d(cin, cout, 3, padding=1)
    x = torch.randn(B, cin, hw, hw)
    g = torch.randn(B, cout, hw, hw)
    chunk = max(1, (1 << 22) // (cout * cin * 9))  # per-sample grads of one chunk ≤ 16 MB
    t = time.perf_counter()
    k = _ops.sqgrad_conv(g, x, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    tk = time.perf_counter() - t
    t = time.perf_counter()
    r = torch_tiled(layer, x, g, chunk)
    tt = time.perf_counter() - t
    err = ((k - r).norm() / r.norm()).item()
    print(
        f"conv {cin:>3}->{cout:<3} {hw:>2}x{hw:<2}  kernel {tk * 1e3:7.1f} ms   "
        f"torch tiled (chunk {chunk:>3}) {tt * 1e3:7.1f} ms   "
        f"kernel speed-up {tt / tk:4.1f}x  (rel diff {err:.1e})",
        flush=True,
    )

# Thin groups (depthwise): the fused kernel vs the folded path (torch's weight-gradient convolution with the batch in
# the groups, fisherx.fisher.rules.conv._folded) vs plain's own weight gradient of the batch (the floor).

for c, hw, stride in [(32, 32, 1), (32, 32, 2), (64, 16, 2), (128, 8, 1)]:
    layer = nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False)
    x = torch.randn(B, c, hw, hw)
    g = torch.randn(B, c, *layer(x[:1]).shape[2:])
    t = time.perf_counter()
    k = _ops.sqgrad_conv(g, x, [3, 3], [stride] * 2, [1, 1], [1, 1], c)
    tk = time.perf_counter() - t
    t = time.perf_counter()
    f = _folded(layer, x, g)
    tf = time.perf_counter() - t
    t = time.perf_counter()
    torch.nn.grad.conv2d_weight(x, layer.weight.shape, g, stride, 1, 1, c)
    tp = time.perf_counter() - t
    err = ((k.reshape(-1) - f.reshape(-1)).norm() / f.norm()).item()
    print(
        f"depthwise {c:>3} {hw:>2}x{hw:<2} stride {stride}  kernel {tk * 1e3:7.1f} ms   folded {tf * 1e3:7.1f} ms   "
        f"plain weight grad {tp * 1e3:7.1f} ms  (rel diff {err:.1e})",
        flush=True,
    )

# Stems with few input channels (K = C·k² of 9 or 27): the fused kernel vs plain's weight gradient of the batch.
for cin, cout, hw in [(1, 32, 28), (3, 32, 32), (3, 64, 32)]:
    x = torch.randn(B, cin, hw, hw)
    g = torch.randn(B, cout, hw, hw)
    t = time.perf_counter()
    _ops.sqgrad_conv(g, x, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    tk = time.perf_counter() - t
    t = time.perf_counter()
    torch.nn.grad.conv2d_weight(x, (cout, cin, 3, 3), g, 1, 1, 1, 1)
    tp = time.perf_counter() - t
    print(
        f"stem conv {cin}->{cout:<3} {hw:>2}x{hw:<2}  kernel {tk * 1e3:7.1f} ms   plain weight grad {tp * 1e3:7.1f} ms",
        flush=True,
    )

# Norm statistics: torch.var_mean against what the norm rules use (fisherx.fisher.rules.norm).

for name, x, rows in [
    ("GroupNorm 32ch/4 groups 32x32", torch.randn(B, 32, 32, 32), B * 4),
    ("LayerNorm (B, 65, 128)", torch.randn(B, 65, 128), B * 65),
]:
    xv = x.reshape(rows, -1)
    t = time.perf_counter()
    torch.var_mean(xv, dim=1, unbiased=False)
    tv = time.perf_counter() - t
    t = time.perf_counter()
    if name.startswith("Group"):
        _row_stats(xv, 1e-5)
    else:
        torch.native_layer_norm(x, [128], None, None, 1e-5)
    tr = time.perf_counter() - t
    print(f"{name:<30} var_mean {tv * 1e3:7.1f} ms   the rule's {tr * 1e3:7.1f} ms", flush=True)
