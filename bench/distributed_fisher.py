"""Time fisher_diag of a mid-size CNN on 4096 28x28 samples, sharded over the torchrun ranks.

    OMP_NUM_THREADS=1 GLOO_SOCKET_IFNAME=lo torchrun --nproc_per_node=N bench/distributed_fisher.py

Rank 0 prints the wall time of the Fisher (after a warm-up); every N gives the same trace.
"""

import time

import torch

import fisherx
from fisherx import distributed as fxd

fxd.init_from_env()
rank, world = fxd.rank_and_world()
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 32, 3, padding=1),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(32, 64, 3, padding=1),
    torch.nn.ReLU(),
    torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(64, 128, 3, padding=1),
    torch.nn.ReLU(),
    torch.nn.AdaptiveAvgPool2d(1),
    torch.nn.Flatten(),
    torch.nn.Linear(128, 10),
)
g = torch.Generator().manual_seed(1)
x, y = torch.randn(4096, 1, 28, 28, generator=g), torch.randint(0, 10, (4096,), generator=g)
shard = slice(rank, None, world)
fisherx.fisher_diag(model, (x[:256], y[:256]), progress=False, distributed=False)  # warm-up
fxd.barrier()
t = time.perf_counter()
f = fisherx.fisher_diag(model, (x[shard], y[shard]), progress=False)
dt = time.perf_counter() - t
if rank == 0:
    print(
        f"world={world} n={f.n_samples} seconds={dt:.2f} samples_per_s={f.n_samples / dt:.0f} "
        f"trace={float(f.trace()):.6e}"
    )
