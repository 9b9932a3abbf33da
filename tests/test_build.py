"""The extension reports how it was built, and the `fisherx info` command prints it."""

import subprocess
import sys

import torch

import fisherx
from fisherx import _ops


def test_build_info_describes_the_extension():
    info = fisherx.build_info()
    assert info["version"] == fisherx.__version__ and info["version"].count(".") == 2
    assert isinstance(info["cuda"], bool)
    assert info["cuda"] == hasattr(_ops._C, "cuda")
    assert info["cuda"] or info["cuda_archs"] == ""
    assert info["openmp_max_threads"] >= 1


def test_info_command_prints_the_build():
    out = subprocess.run([sys.executable, "-m", "fisherx", "info"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].split() == ["fisherx", fisherx.__version__]
    assert "CUDA kernels" in out and "OpenMP" in out
    assert torch.__version__ in out
