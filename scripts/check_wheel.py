"""Check a built fisherx wheel's extension: what it links, and whether it carries CUDA kernels.

    python scripts/check_wheel.py WHEEL --variant cpu|cuda

Fails (exit 1) when the extension links libtorch/libc10 or the CUDA runtime dynamically (the wheel must work
with any torch and without a CUDA toolkit), or when the CUDA variant has no device code.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FORBIDDEN = re.compile(r"^(libtorch|libc10|libcudart|libtorch_python)")


def needed_libraries(so: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def has_device_code(so: Path) -> bool:
    out = subprocess.run(["readelf", "-S", "-W", str(so)], capture_output=True, text=True, check=True).stdout
    return ".nv_fatbin" in out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--variant", choices=["cpu", "cuda"], required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(args.wheel) as zf:
            zf.extractall(tmp)
        sos = sorted(Path(tmp).glob("fisherx/_C*.so"))
        if len(sos) != 1:
            print(f"{args.wheel.name}: expected one fisherx/_C*.so, found {[s.name for s in sos]}")
            return 1
        needed = needed_libraries(sos[0])
        bad = [lib for lib in needed if FORBIDDEN.match(lib)]
        device = has_device_code(sos[0])
    print(f"{args.wheel.name}: NEEDED {', '.join(needed)}; CUDA device code: {'yes' if device else 'no'}")
    problems = []
    if bad:
        problems.append(f"links {', '.join(bad)} dynamically")
    if args.variant == "cuda" and not device:
        problems.append("the cuda variant carries no CUDA device code")
    if args.variant == "cpu" and device:
        problems.append("the cpu variant carries CUDA device code")
    for p in problems:
        print(f"FAIL: {args.wheel.name} {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
