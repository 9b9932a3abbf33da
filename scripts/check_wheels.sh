#!/usr/bin/env bash
# Build the CPU and the CUDA wheel, check what each links, install each into a fresh virtual environment with
# torch, and run a smoke test there (on this GPU-less machine the CUDA wheel must import and work on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
out=${WHEEL_DIR:-dist}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for variant in cpu cuda; do
  echo "== $variant wheel"
  scripts/build_wheel.sh "$variant" "$out"
  wheel=$(ls -t "$out/$variant"/fisherx-*.whl | head -n 1)
  "$python" scripts/check_wheel.py "$wheel" --variant "$variant"
  if command -v auditwheel >/dev/null 2>&1; then auditwheel show "$wheel" || true; fi
  "$python" -m venv "$work/$variant"
  "$work/$variant/bin/python" -m pip install -q "$torch_spec"
  "$work/$variant/bin/python" -m pip install -q "$wheel"
  # Run from an empty directory so the installed wheel, not the source tree, is imported.
  (cd "$work" && "$work/$variant/bin/python" - "$variant" <<'PY'
import sys

import torch

import fisherx
from fisherx import _reference

variant = sys.argv[1]
info = fisherx.build_info()
assert info["cuda"] == (variant == "cuda"), info
assert "site-packages" in fisherx.__file__, fisherx.__file__
# float64 to the reference's rounding; float32 to its documented 1e-6 (docs/distances.md).
for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-6)):
    a, b = torch.rand(3, 1001, dtype=dtype), torch.rand(1001, dtype=dtype)
    got = fisherx.distance_column(a, b)
    torch.testing.assert_close(got, _reference.ftd_column(a, b), rtol=rtol, atol=1e-12)
print(f"{variant} wheel OK: fisherx {info['version']}, cuda={info['cuda']} {info['cuda_archs']}")
PY
  )
  "$work/$variant/bin/fisherx" info
done
