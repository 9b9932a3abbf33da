"""Saving and loading 100 MB of tensors: fisherx's checksummed safetensors files vs plain safetensors.

    python bench/bench_io.py                 # interleaved rounds, medians and worst rounds of the ratios
    python bench/bench_io.py --format1 REV   # also the format-1 writer of git revision REV (e.g. df45863)

fisherx's save does more than ``safetensors.torch.save_file``: a SHA-256 over the whole file (overlapped with the
write in a thread), fsync of the file and its folder, and an atomic rename. Its load reads the file once into one
buffer, hashes it and views the tensors in place; safetensors' ``load_file`` maps the file and copies each tensor
out without verifying anything, so its load is timed with every tensor read (a sum), as a caller would use it.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fisherx import io


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _format1(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:fisherx/io/files.py"], capture_output=True, text=True, check=True)
    path = Path(tempfile.mkdtemp()) / "format1.py"
    path.write_text(src.stdout)
    spec = importlib.util.spec_from_file_location("format1", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--format1", metavar="REV", help="also time the format-1 writer/reader of this git revision")
    args = ap.parse_args(argv)
    n = args.mb * 1_000_000 // 4 // 10
    tensors = {f"layer{i}.weight": torch.randn(n) for i in range(10)}
    d = Path(tempfile.mkdtemp())
    impls = {
        "fisherx save": lambda: io.save_tensors(d / "a.safetensors", tensors),
        "safetensors save": lambda: save_file(tensors, d / "b.safetensors"),
        "fisherx load": lambda: io.load_tensors(d / "a.safetensors"),
        "safetensors load": lambda: sum(float(t.sum()) for t in load_file(d / "b.safetensors").values()),
    }
    if args.format1:
        old = _format1(args.format1)
        impls["format-1 save"] = lambda: old.save_tensors(d / "c.fx", tensors)
        impls["format-1 load"] = lambda: old.load_tensors(d / "c.fx")
    for fn in impls.values():  # warm-up, and the files the loads read
        fn()
    times = {k: [] for k in impls}
    for _ in range(args.rounds):  # A B A B ...: every round times every implementation once
        for k, fn in impls.items():
            times[k].append(_timed(fn))
    print(f"{args.mb} MB in 10 float32 tensors, {args.rounds} interleaved rounds (median, worst)")
    for k, ts in times.items():
        print(f"  {k:<18} {statistics.median(ts):.3f} s   worst {max(ts):.3f} s")
    pairs = [("fisherx save", "safetensors save"), ("fisherx load", "safetensors load")]
    if args.format1:
        pairs += [("format-1 save", "fisherx save"), ("format-1 load", "fisherx load")]
    for a, b in pairs:
        r = [x / y for x, y in zip(times[a], times[b], strict=True)]
        print(f"  {a} / {b}: median {statistics.median(r):.2f}x, worst round {max(r):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
