"""torch.distributed support: data-parallel Fisher accumulation and units of work spread across ranks.

fisherx uses the process group PyTorch users already have (``torchrun`` sets it up); there is no process pool or
RPC of its own. Under an initialised group:

- :func:`fisherx.fisher_diag` computes each rank's shard and all-reduces the weighted accumulators once at the
  end, so every rank holds the Fisher of all samples: ``F = Σ_r n_r·F_r / Σ_r n_r``.
- :func:`fisherx.task_distances` gives each rank every ``world``-th unit of work (train a network, compute a
  Fisher); the units meet in the shared cache directory and rank 0 assembles the result, so the finished units of
  a failed rank survive and a re-run computes only what is missing.

gloo serves CPU tensors and NCCL CUDA tensors. A rank that dies makes the others fail within the process group's
timeout (``FISHERX_DIST_TIMEOUT`` seconds, default 300) instead of hanging; under torchrun the agent also stops
the surviving ranks at once.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 300.0


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0, and outside a process group: the process that prints and writes the results."""
    return rank_and_world()[0] == 0


def timeout() -> datetime.timedelta:
    """The collective timeout fisherx uses: ``FISHERX_DIST_TIMEOUT`` seconds (default 300)."""
    raw = os.environ.get("FISHERX_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"FISHERX_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if seconds <= 0:
        raise ValueError(f"FISHERX_DIST_TIMEOUT must be positive, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def init_from_env(device: str | torch.device | None = None) -> bool:
    """Initialise the default process group when launched by torchrun (``RANK``/``WORLD_SIZE`` are set).

    The backend is NCCL for CUDA devices and gloo otherwise. Returns True when a group of more than one rank is
    active afterwards. Calling it again, or outside torchrun, is harmless.
    """
    if not dist.is_available() or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return is_distributed()
    if not dist.is_initialized():
        use_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timeout())
    return is_distributed()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Sum tensors over all ranks with one collective (flattened into one float64 buffer); returns new tensors.

    float64 keeps the sum exact enough that the result does not depend on the number of ranks beyond rounding.
    """
    if not is_distributed() or not tensors:
        return [t.clone() for t in tensors]
    dev = _collective_device()
    flat = torch.cat([t.detach().reshape(-1).to(device=dev, dtype=torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, offset = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[offset : offset + n].reshape(t.shape).to(device=t.device, dtype=t.dtype))
        offset += n
    return out


def weighted_mean(tensors: Sequence[torch.Tensor], n_local: int) -> tuple[list[torch.Tensor], int]:
    """Combine per-rank means weighted by their sample counts: ``(Σ_r n_r·x_r / Σ_r n_r, Σ_r n_r)``.

    This is how per-rank Fisher diagonals (each a mean over its shard) become the Fisher of all samples.
    """
    if not is_distributed():
        return [t.clone() for t in tensors], n_local
    weighted = [t.to(torch.float64) * float(n_local) for t in tensors]
    *sums, count = all_reduce_sum([*weighted, torch.tensor(float(n_local), dtype=torch.float64)])
    total = int(round(float(count)))
    if total == 0:
        raise ValueError("no rank saw any sample: the Fisher of an empty data set is undefined")
    return [(s / total).to(t.dtype) for s, t in zip(sums, tensors, strict=True)], total


def assigned(units: Sequence[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """The units of work this rank does: every ``world``-th unit, starting at ``rank`` (round robin)."""
    r, w = rank_and_world()
    rank = r if rank is None else rank
    world = w if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    return list(units[rank::world])


def barrier() -> None:
    """Wait for every rank; with gloo a rank that does not arrive within the timeout is named in the error."""
    if not is_distributed():
        return
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timeout())
    else:
        dist.barrier()
