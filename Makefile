# Set-up and day-to-day commands. Each target creates the virtual environment it needs, so a fresh clone with
# only Python 3.11, the compilers and the package registries is enough.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# The test build skips the CUDA kernels (no GPU to run them here); `make cuda-build` compiles them on their own.
FISHERX_CUDA ?= OFF
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fisherx-installed
CSRC_FILES := $(shell find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh')

.PHONY: test lint docs demo bench cuda-build clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall whenever the sources or the build description change.
$(STAMP): $(VENV)/bin/python pyproject.toml CMakeLists.txt $(shell find csrc -type f)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	FISHERX_CUDA=$(FISHERX_CUDA) $(PY) -m pip install -q -e ".[test,bench,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Lint, format check and type check (configured in pyproject.toml), and the C++/CUDA format check (.clang-format);
# non-zero exit on any finding.
lint: $(STAMP)
	$(VENV)/bin/ruff check fisherx tests bench
	$(VENV)/bin/ruff format --check fisherx tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC_FILES)

# The docs site with the API reference from the docstrings; warnings fail the build (build/site).
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet

demo: $(STAMP)
	$(VENV)/bin/fisherx demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) -m pytest bench -q --benchmark-only $(BENCH_ARGS)

# Compile and link the CUDA kernels (no GPU needed), so a broken .cu file is seen on any machine with nvcc.
cuda-build: $(VENV)/bin/python
	$(PY) -m pip install -q pybind11 cmake ninja
	$(VENV)/bin/cmake -S . -B build/cuda-check -G Ninja -DFISHERX_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
		-Dpybind11_DIR="$$($(PY) -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(abspath $(PY))"
	$(VENV)/bin/cmake --build build/cuda-check

clean:
	rm -rf build dist $(VENV) $(STAMP)
