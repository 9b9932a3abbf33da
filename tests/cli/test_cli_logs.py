"""A command's output sent to a file (a log, CI, a pipe) holds plain lines only: no carriage returns or terminal
escape sequences from progress bars, and still one line per stage, so that a long run's log says where it is."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

CONTROL = ("\r", "\x1b")


def _npz(path, d=6, n=80):
    g = np.random.default_rng(0)
    x = g.normal(size=(n, d)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    x[np.arange(n), y] += 2.0
    np.savez(path, x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:], class_names=np.array(["a", "b", "c"]))


def test_redirected_distances_log_has_no_control_sequences(tmp_path):
    _npz(tmp_path / "d.npz")
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(f"""
        import fisherx
        TASKS = [fisherx.Task.from_npz("A", {str(tmp_path / "d.npz")!r}, classes=["a"], other=True),
                 fisherx.Task.from_npz("B", {str(tmp_path / "d.npz")!r}, classes=["b"], other=True)]
        from torch import nn
        def mlp(num_outputs):
            return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, num_outputs))
        """)
    )
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        rc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fisherx",
                "distances",
                "--tasks",
                f"{tmp_path / 'tasks.py'}:TASKS",
                "--model",
                f"{tmp_path / 'tasks.py'}:mlp",
                "--seeds",
                "0",
                "--epochs",
                "2",
                "--device",
                "cpu",
                "--gates",
                "off",
                "--out",
                str(tmp_path / "out"),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TERM": "xterm-256color"},
            timeout=300,
        ).returncode
    text = log.read_text()
    assert rc == 0, text
    assert not [c for c in CONTROL if c in text], text[:2000]
    lines = text.splitlines()
    assert any(line.startswith("task distances [") and "train" in line for line in lines), text[:2000]
    assert any(line.startswith("task distances: ") and " step in " in line for line in lines), text[:2000]
