"""Shared by every bench/ module: a summary table printed after the pytest-benchmark tables.

A benchmark records each measurement with ``summary.add(group, impl, seconds_per_call, bytes_read)``; at the end
this prints, per group, every implementation's time, its speed-up over the group's ``reference`` row, and (where
bytes were given) the bandwidth in GB/s and its fraction of the group's ``d2d_copy`` row. So a ratio such as
"kernel vs reference" or "kernel vs copy bandwidth" reads off one line per group.
"""

from __future__ import annotations

from collections import defaultdict

import pytest


class Summary:
    def __init__(self):
        self.rows: dict[str, dict[str, tuple[float, float | None]]] = defaultdict(dict)

    def add(self, group: str, impl: str, seconds: float, bytes_moved: float | None = None) -> None:
        self.rows[group][impl] = (seconds, bytes_moved)

    def lines(self) -> list[str]:
        out = [f"{'group':<34} {'impl':<12} {'time/call':>12} {'vs reference':>13} {'GB/s':>8} {'of copy BW':>10}"]
        for group in sorted(self.rows):
            impls = self.rows[group]
            ref = impls.get("reference", (None, None))[0]
            copy = impls.get("d2d_copy")
            copy_bw = copy[1] / copy[0] if copy and copy[1] else None
            for impl, (sec, nbytes) in sorted(impls.items()):
                speed = f"{ref / sec:.2f}x" if ref and impl != "reference" else ""
                bw = nbytes / sec if nbytes else None
                frac = f"{bw / copy_bw:.0%}" if bw and copy_bw and impl != "d2d_copy" else ""
                t = f"{sec * 1e3:.3f} ms" if sec >= 1e-3 else f"{sec * 1e6:.1f} us"
                out.append(f"{group:<34} {impl:<12} {t:>12} {speed:>13} {bw / 1e9 if bw else 0:>8.1f} {frac:>10}")
        return out


_SUMMARY = Summary()


@pytest.fixture(scope="session")
def summary() -> Summary:
    return _SUMMARY


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY.rows:
        terminalreporter.section("fisherx benchmark summary (median time per call)")
        for line in _SUMMARY.lines():
            terminalreporter.write_line(line)
