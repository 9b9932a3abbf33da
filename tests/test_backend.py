"""Backend choice: a build whose CUDA kernels cannot run on the present GPU warns once and falls back."""

import warnings

import pytest
import torch

from fisherx import _ops


@pytest.fixture
def fresh_probe():
    _ops.cuda_kernels_usable.cache_clear()
    yield
    _ops.cuda_kernels_usable.cache_clear()


def test_cpu_tensors_use_the_cpu_kernels():
    assert _ops._backend(torch.ones(3)) == "cpu"


def test_no_cuda_means_no_cuda_kernels(fresh_probe, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _ops.cuda_kernels_usable() is False


def test_unrunnable_kernels_warn_once_and_fall_back(fresh_probe, monkeypatch):
    """Simulates a GPU whose architecture the build lacks: the probe launch fails, fisherx says so once."""

    class FakeCudaModule:
        pass

    monkeypatch.setattr(_ops._C, "cuda", FakeCudaModule(), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Imaginary GPU sm_999")

    def failing_probe(*args, **kwargs):
        raise RuntimeError("fisherx CUDA launch: no kernel image is available for execution on the device")

    monkeypatch.setattr(_ops, "_probe_cuda_kernels", failing_probe)
    with pytest.warns(RuntimeWarning, match="cannot run on Imaginary GPU sm_999.*falling back"):
        assert _ops.cuda_kernels_usable(0) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is answered from the cache, silently
        assert _ops.cuda_kernels_usable(0) is False
