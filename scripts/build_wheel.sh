#!/usr/bin/env bash
# Build a fisherx wheel on this machine.
#   scripts/build_wheel.sh cpu  [OUT_DIR]   CPU kernels only
#   scripts/build_wheel.sh cuda [OUT_DIR]   CPU + CUDA kernels for FISHERX_CUDA_ARCHS (default: pyproject.toml's list, sm 75-120 + PTX)
# Neither variant needs torch to build or links libtorch; the CUDA one links cudart statically, so one wheel serves
# every torch version and needs only the NVIDIA driver at run time. Offline (a GPU box with no network), set
# PIP_WHEEL_ARGS=--no-build-isolation with scikit-build-core and pybind11 installed.
set -euo pipefail
variant=${1:?usage: scripts/build_wheel.sh cpu|cuda [OUT_DIR]}
out=${2:-dist}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
case "$variant" in
  cpu) export FISHERX_CUDA=OFF ;;
  cuda) export FISHERX_CUDA=ON PATH="/usr/local/cuda/bin:$PATH" ;;
  *) echo "unknown variant '$variant': expected cpu or cuda" >&2; exit 2 ;;
esac
mkdir -p "$out/$variant"
# A build directory per variant: CMake caches the CUDA decision, so the two must not share one.
"$python" -m pip wheel --no-deps -q -w "$out/$variant" -C build-dir="build/wheel-$variant" ${PIP_WHEEL_ARGS:-} .
ls "$out/$variant"/fisherx-*.whl
