"""What a search costs, per stage: wall time, device time, peak memory, the device: every result says what it cost.

- ``wall_s``: elapsed time (``time.perf_counter``), CUDA work synchronised at both ends so it is counted.
- ``device_s``: on CUDA, the time between two CUDA events recorded on the current stream at the stage's start and end
  (the GPU's own clock); on the CPU, the process's CPU time (``time.process_time``: user + system, all threads), so
  on n busy threads it approaches n × wall time, and on an overloaded machine it stays honest where wall time does not.
- ``peak_rss_mb``: the process's peak resident memory so far (Linux ``VmHWM``, else ``ru_maxrss``) when the stage
  ends; it never decreases, because resetting it would disturb other measurements in the same process.
- ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated`` within the stage (the peak is reset when a stage starts).

A stage run several times, or across a resume, adds its times and keeps the largest peaks; :meth:`CostMeter.to_dict`
goes into checkpoints so that a resumed search reports the cost of all its runs together.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


class CostMeter:
    """Per-stage costs on ``device`` (see the module docstring). Use ``with meter.stage("search"): ...``."""

    FIELDS = ("wall_s", "device_s", "peak_rss_mb", "peak_cuda_mb", "runs")

    def __init__(self, device: torch.device, stages: dict | None = None):
        self.device = torch.device(device)
        self.stages: dict[str, dict] = {k: dict(v) for k, v in (stages or {}).items()}
        self._open: dict[str, tuple] = {}

    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self._start()
        self._open[name] = start
        try:
            yield
        finally:
            del self._open[name]
            self._add(name, self._since(start), runs=1)

    def _start(self) -> tuple:
        event = None
        if self._cuda():
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        return time.perf_counter(), time.process_time(), event

    def _since(self, start: tuple) -> dict:
        wall0, cpu0, event0 = start
        peak_cuda = None
        if self._cuda():
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            torch.cuda.synchronize(self.device)
            device_s = event0.elapsed_time(end) / 1000
            peak_cuda = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            device_s = time.process_time() - cpu0
        return {
            "wall_s": time.perf_counter() - wall0,
            "device_s": device_s,
            "peak_rss_mb": peak_rss_mb(),
            "peak_cuda_mb": peak_cuda,
        }

    def _add(self, name: str, d: dict, runs: int) -> None:
        cur = self.stages.setdefault(
            name, {"wall_s": 0.0, "device_s": 0.0, "peak_rss_mb": 0.0, "peak_cuda_mb": None, "runs": 0}
        )
        cur["wall_s"] += d["wall_s"]
        cur["device_s"] += d["device_s"]
        cur["peak_rss_mb"] = max(cur["peak_rss_mb"], d["peak_rss_mb"])
        if d["peak_cuda_mb"] is not None:
            cur["peak_cuda_mb"] = max(cur["peak_cuda_mb"] or 0.0, d["peak_cuda_mb"])
        cur["runs"] += runs

    def add(self, name: str, d: dict) -> None:
        """Merge a stage measured elsewhere (another meter's ``to_dict()["stages"][name]``)."""
        self._add(name, d, runs=int(d.get("runs", 1)))

    def snapshot(self) -> dict:
        """The stages as they would read if every open stage ended now (what a checkpoint stores: a resume
        continues from these totals)."""
        out = CostMeter(self.device, self.stages)
        for name, start in self._open.items():
            out._add(name, self._since(start), runs=1)
        return out.stages

    def to_dict(self) -> dict:
        return {"stages": {k: dict(v) for k, v in self.stages.items()}}
