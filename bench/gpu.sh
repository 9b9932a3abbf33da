#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and no network:
#   builds fisherx with its CUDA kernels, runs the CUDA tests, runs the GPU benchmarks and prints their table.
#
#   bench/gpu.sh                       # from anywhere; PYTHON=/path/to/python to pick the interpreter
#
# Assumes torch (with CUDA) and the build dependencies (scikit-build-core, pybind11, cmake, ninja; pytest and
# pytest-benchmark to run) are already installed for $PYTHON: nothing is downloaded (pip --no-build-isolation
# --no-deps --no-index). Builds only for the GPU present unless FISHERX_CUDA_ARCHS is set. Logs and the
# pytest-benchmark JSON go to $GPU_RESULTS (default build/gpu-results/). Exits non-zero if any step failed.
#
# To add a step: append a test selection to CUDA_TESTS or a benchmark file to BENCHES below.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
RESULTS=${GPU_RESULTS:-build/gpu-results}
CUDA_TESTS=(tests)                 # pytest -m cuda over these paths
BENCHES=(bench/bench_distance.py)  # pytest -m cuda --benchmark-only over these files: one summary table
BENCHES+=(bench/bench_fisher.py)   # Fisher engine: VGG-16 / ResNet-18 at batch 128, fisherx vs plain fwd+bwd
mkdir -p "$RESULTS"
failed=()

step() { printf '\n==== %s\n' "$*"; }

step "environment"
"$PY" - <<'EOF' || { echo "torch with a visible CUDA device is required"; exit 1; }
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "device", torch.cuda.get_device_name(0))
EOF
"$PY" -c "import scikit_build_core, pybind11, pytest, pytest_benchmark" \
  || { echo "install scikit-build-core, pybind11, cmake, ninja, pytest, pytest-benchmark first"; exit 1; }
if [ -z "${FISHERX_CUDA_ARCHS:-}" ]; then
  FISHERX_CUDA_ARCHS="$("$PY" -c 'import torch; M, m = torch.cuda.get_device_capability(0); print(f"{M}{m}-real")')"
fi
export FISHERX_CUDA_ARCHS

step "build (FISHERX_CUDA=ON, archs $FISHERX_CUDA_ARCHS)"
if ! FISHERX_CUDA=ON "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . 2>&1 \
    | tee "$RESULTS/build.log" | tail -n 5; then
  echo "build failed: see $RESULTS/build.log"; exit 1
fi
"$PY" -m fisherx info || failed+=("info")

step "CUDA tests: pytest -m cuda ${CUDA_TESTS[*]}"
"$PY" -m pytest -m cuda -q -rs "${CUDA_TESTS[@]}" 2>&1 | tee "$RESULTS/cuda-tests.log" | tail -n 25
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("cuda tests")

step "GPU benchmarks: ${BENCHES[*]}"
"$PY" -m pytest -m cuda -q "${BENCHES[@]}" --benchmark-only --benchmark-columns=median,iqr,rounds \
  --benchmark-json="$RESULTS/benchmarks.json" 2>&1 | tee "$RESULTS/benchmarks.log" \
  | sed -n '/fisherx benchmark summary/,/^$/p'
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("benchmarks")

step "done"
echo "full logs and JSON: $RESULTS/"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
