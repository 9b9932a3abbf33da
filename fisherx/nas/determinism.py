"""One seed controls a whole search: isolated, checkpointable random states, deterministic kernels, and a warning
when an operation in use has no deterministic implementation on the current device.

What a search sets while it runs (and restores afterwards, so the caller's settings and random streams are left as
they were):

- ``torch.use_deterministic_algorithms(True, warn_only=True)``: PyTorch picks deterministic kernels where it has
  them (e.g. CUDA convolutions, ``index_add``); where it has none it *warns* instead of raising, and
  :func:`watch_nondeterminism` turns that into one :class:`NondeterminismWarning` per operation and device, so a
  search still runs but says it will not be bit-reproducible.
- ``torch.backends.cudnn.deterministic = True`` and ``torch.backends.cudnn.benchmark = False``: benchmark mode times
  several convolution algorithms at the first call and keeps the fastest, which can differ from run to run.
- ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (only if unset): CUDA ≥ 10.2 cuBLAS reduces in a nondeterministic order
  unless its workspace is fixed; it must be set before the process's first cuBLAS call, so set it in the
  environment when CUDA has already been used (a warning says so).
- The global random generators (torch CPU, torch CUDA of the search device, numpy, Python ``random``) are seeded
  from the search seed inside the search and restored afterwards: an operation that draws from a global generator
  (dropout, a user's op) is then seeded too, and :func:`rng_state` captures all of them for checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import torch

#: The cuBLAS workspace setting that makes cuBLAS reductions deterministic (NVIDIA's documented value).
CUBLAS_WORKSPACE = ":4096:8"

_PYTORCH_ALERT = re.compile(r"^(\S+) does not have a deterministic implementation")
_WARNED: set[tuple[str, str]] = set()


class NondeterminismWarning(UserWarning):
    """An operation used by a search has no deterministic implementation on the current device."""


# --------------------------------------------------------------------------------------------- random states


def rng_state(device: torch.device | None = None) -> dict:
    """Every global random state a search can touch, as a tree :func:`fisherx.io.save_tree` can store: torch's CPU
    generator, the CUDA generator of ``device`` (if CUDA), numpy's global generator and Python's ``random``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = device is not None and torch.device(device).type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(torch.device(device)) if cuda else None,
        # fisherx files store no uint32; the 624 Mersenne-Twister words fit in int64 exactly.
        "numpy": (name, keys.astype(np.int64), int(pos), int(has_gauss), float(gauss)),
        "random": random.getstate(),
    }


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys).astype(np.uint32), pos, has_gauss, gauss))
    version, words, gauss_next = state["random"]
    random.setstate((version, tuple(words), gauss_next))


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed every global generator from ``seed`` for the block, and give the caller back its own states after."""
    saved = rng_state(device)
    try:
        # Only the generators restored below are seeded (torch.manual_seed would reseed every CUDA device's).
        torch.default_generator.manual_seed(seed)
        if device is not None and torch.device(device).type == "cuda":
            with torch.cuda.device(torch.device(device)):
                torch.cuda.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
    finally:
        set_rng_state(saved, device)


def environment(device: torch.device) -> dict:
    """What a bit-exact resume needs to be the same as when the checkpoint was written: the torch version, its
    CPU thread count (reductions split differently over another number of threads) and the device."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": name}


def check_environment(saved: dict | None, device: torch.device, what: str) -> None:
    """Warn (:class:`NondeterminismWarning`) when ``what`` resumes in another environment than the one that wrote
    its checkpoint: the run goes on correctly, but need not end bit-identical to an uninterrupted one."""
    if saved is None:
        return
    now = environment(device)
    diff = [f"{k} {saved.get(k)!r} then, {now[k]!r} now" for k in now if saved.get(k) != now[k]]
    if diff:
        warnings.warn(
            f"{what} resumes in another environment than the one that wrote its checkpoint "
            f"({'; '.join(diff)}): it continues correctly, but its result may differ in the last bits "
            "from an uninterrupted run",
            NondeterminismWarning,
            stacklevel=3,
        )


# ------------------------------------------------------------------------------------------ deterministic kernels


@contextlib.contextmanager
def deterministic_algorithms(warn_only: bool = True) -> Iterator[None]:
    """The flags listed in the module docstring for the block; the previous values are restored after (the
    environment variable too, though cuBLAS keeps the workspace it started with)."""
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    env_prev = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if env_prev is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            warnings.warn(
                "CUBLAS_WORKSPACE_CONFIG was not set before CUDA was first used in this process, so cuBLAS "
                "may reduce in a nondeterministic order; for bit-reproducible searches on a GPU start the "
                f"process with CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE}",
                NondeterminismWarning,
                stacklevel=3,
            )
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    _use_deterministic(True, warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        _use_deterministic(prev[0], prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]
        if env_prev is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _use_deterministic(mode: bool, warn_only: bool) -> None:
    # torch.use_deterministic_algorithms also sets torch._inductor's flag, importing torch._inductor to do so: 2-3 s
    # per process (measured, torch 2.13) for a flag that matters only to torch.compile. When inductor is not loaded
    # nothing can be compiled with it, so the kernel-level switch alone is the same setting, without the import.
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


@contextlib.contextmanager
def watch_nondeterminism(device: torch.device, found: list | None = None) -> Iterator[list]:
    """Collect PyTorch's "X does not have a deterministic implementation" warnings raised in the block (they come
    from ``use_deterministic_algorithms(True, warn_only=True)``), append each operation name once to ``found``, and
    warn once per (operation, device type) per process with a :class:`NondeterminismWarning`. Every other warning
    raised in the block is passed on when the block ends (also when it ends with an exception), under the caller's
    filters."""
    found = [] if found is None else found
    records: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield found
            finally:
                records = list(caught)
    finally:
        _replay(records, found, torch.device(device).type)


_REPLAY_REGISTRY: dict = {}  # so that "default"/"module" filters show a replayed warning once, not once per step


def _replay(records: list, found: list, dev: str) -> None:
    for w in records:
        m = _PYTORCH_ALERT.match(str(w.message))
        if m is None:
            warnings.warn_explicit(
                w.message, w.category, w.filename, w.lineno, registry=_REPLAY_REGISTRY, source=w.source
            )
            continue
        op = m.group(1)
        if op not in found:
            found.append(op)
        if (op, dev) not in _WARNED:
            _WARNED.add((op, dev))
            warnings.warn(
                f"{op} has no deterministic implementation on {dev}: this search is not bit-reproducible "
                f"on this device (its results and a resume can differ in the last bits)",
                NondeterminismWarning,
                stacklevel=4,
            )


@contextlib.contextmanager
def reproducible(
    seed: int, device: torch.device, *, deterministic: bool = True, found: list | None = None
) -> Iterator[list]:
    """Everything a search runs under: :func:`isolated_rng` seeded with ``seed``, and with ``deterministic``
    :func:`deterministic_algorithms` and :func:`watch_nondeterminism` (yielding the list of nondeterministic
    operations met, appended to ``found``)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(isolated_rng(seed, device))
        if deterministic:
            stack.enter_context(deterministic_algorithms(warn_only=True))
            yield stack.enter_context(watch_nondeterminism(device, found))
        else:
            yield [] if found is None else found
