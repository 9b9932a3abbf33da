"""The command line on the user's own tasks and networks: --tasks/--model FILE.py:NAME for distances and search, and
TOML run files (npz tasks with class subsets, CIFAR batches and image folders), with one-line errors."""

from __future__ import annotations

import json
import textwrap
import warnings

import numpy as np
import pytest
from synthetic_datasets import write_cifar10, write_imagefolder

from fisherx.cli import main
from fisherx.models import EpsilonWarning

QUICK = ["--seeds", "0", "--epochs", "2", "--device", "cpu", "--quiet", "--gates", "off"]


def _npz(path, d=6, n=80, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    x[np.arange(n), y] += 2.0
    np.savez(path, x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:], class_names=np.array(["a", "b", "c"]))
    return path


MODELS = """
from torch import nn

def mlp(num_outputs):
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, num_outputs))

def narrow(num_outputs):
    return nn.Linear(6, 1)
"""


@pytest.fixture
def files(tmp_path):
    _npz(tmp_path / "d.npz")
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(f"""
        import fisherx
        TASKS = [fisherx.Task.from_npz("A", {str(tmp_path / "d.npz")!r}, classes=["a"], other=True),
                 fisherx.Task.from_npz("B", {str(tmp_path / "d.npz")!r}, classes=["b"], other=True)]
        """)
    )
    return tmp_path


def test_distances_with_tasks_and_model_from_files(files, capsys):
    out = files / "out"
    assert (
        main(
            [
                "distances",
                "--tasks",
                f"{files / 'tasks.py'}:TASKS",
                "--model",
                f"{files / 'models.py'}:mlp",
                "--out",
                str(out),
                *QUICK,
            ]
        )
        == 0
    )
    res = json.loads((out / "result.json").read_text())
    assert res["archs"] == ["mlp"] and res["task_names"] == ["A", "B"]
    assert "A" in capsys.readouterr().out


def test_distances_with_a_toml_run_file(files):
    (files / "run.toml").write_text(
        textwrap.dedent("""
        seeds = [0, 1]
        epochs = 2
        gates = "off"
        device = "cpu"
        [model]
        factory = "models.py:mlp"
        [[tasks]]
        name = "A"
        npz = "d.npz"
        classes = ["a"]
        other = true
        [[tasks]]
        name = "BC"
        npz = "d.npz"
        classes = [["b", "c"]]
        other = true
        """)
    )
    out = files / "out"
    assert main(["distances", "--config", str(files / "run.toml"), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["archs"] == ["mlp"] and res["seeds"] == [0, 1] and res["task_names"] == ["A", "BC"]
    assert res["config"]["tasks"][1]["classes"] == [["b", "c"]]


def test_toml_run_file_with_cifar_batches_and_an_image_folder(tmp_path):
    write_cifar10(tmp_path / "c10", per_class_train=6, per_class_test=2)
    write_imagefolder(tmp_path / "folder", ["cat", "dog", "ship"], n_train=6, n_test=2, wnids=False, size=12)
    (tmp_path / "run.toml").write_text(
        textwrap.dedent("""
        seeds = [0]
        epochs = 1
        gates = "off"
        device = "cpu"
        [model]
        arch = "mlp"
        [[tasks]]
        name = "cifar_cat"
        source = "cifar10"
        data_dir = "c10"
        classes = ["cat"]
        other = true
        [[tasks]]
        name = "folder_dog"
        source = "imagefolder"
        data_dir = "folder"
        classes = ["dog"]
        other = true
        image_size = 32
        """)
    )
    out = tmp_path / "out"
    assert main(["distances", "--config", str(tmp_path / "run.toml"), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["archs"] == ["mlp"] and res["task_names"] == ["cifar_cat", "folder_dog"]


@pytest.mark.parametrize(
    "toml,msg",
    [
        (
            'seed = [0]\n[[tasks]]\nname="A"\nnpz="d.npz"\n[[tasks]]\nname="B"\nnpz="d.npz"\n',
            r"run\.toml: unknown key\(s\) seed \(allowed: ",
        ),
        ('[[tasks]]\nname="A"\nnpz="d.npz"\n', r"needs at least two \[\[tasks\]\] tables"),
        ('[[tasks]]\nname="A"\nnpz="nope.npz"\n[[tasks]]\nname="B"\nnpz="d.npz"\n', r"data file .*nope\.npz not found"),
        (
            '[[tasks]]\nname="A"\n[[tasks]]\nname="B"\nnpz="d.npz"\n',
            r"task 'A' needs exactly one of npz = FILE or "
            r"source = NAME",
        ),
        (
            '[model]\nfactory="models.py:narrow"\n[[tasks]]\nname="A"\nnpz="d.npz"\n[[tasks]]\nname="B"\nnpz="d.npz"\n',
            r"network 'narrow' returns outputs of shape \(1,\) per sample but the family needs \(3,\)",
        ),
        (
            '[model]\nfactory="models.py:wide"\n[[tasks]]\nname="A"\nnpz="d.npz"\n[[tasks]]\nname="B"\nnpz="d.npz"\n',
            r"models\.py has no 'wide' \(it defines: .*mlp, narrow",
        ),
        ("seeds = [0\n", r"not valid TOML"),
    ],
)
def test_bad_run_files_one_line_errors(files, toml, msg):
    (files / "run.toml").write_text(toml)
    with pytest.raises(SystemExit, match=msg) as info:
        main(["distances", "--config", str(files / "run.toml"), "--out", str(files / "out"), *QUICK])
    assert str(info.value).startswith("fisherx distances: ") and "\n" not in str(info.value)


def test_bad_references_one_line_errors(files):
    for argv, msg in [
        (["--tasks", f"{files / 'nope.py'}:TASKS"], r"file .*nope\.py not found"),
        (["--tasks", f"{files / 'models.py'}:mlp"], r"must name a list of fisherx Tasks"),
        (
            ["--tasks", f"{files / 'tasks.py'}:TASKS", "--model", f"{files / 'models.py'}:narrow"],
            r"its head has the wrong width for num_outputs=2",
        ),
    ]:
        with pytest.raises(SystemExit, match=msg):
            main(["distances", *argv, "--out", str(files / "out"), *QUICK])


def test_search_with_tasks_from_a_file(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(0, 0.3, size=(120, 1, 8, 8)).astype(np.float32)
    y = (np.arange(120) % 4).astype(np.int64)
    for i, c in enumerate(y):
        x[i, 0, 2 * c, :] += 2.0
    np.savez(tmp_path / "bars.npz", x_train=x[:90], y_train=y[:90], x_test=x[90:], y_test=y[90:])
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(f"""
        import fisherx
        def tasks():
            return [fisherx.Task.from_npz(n, {str(tmp_path / "bars.npz")!r}, classes=[c], other=True)
                    for n, c in (("A", "0"), ("B", "1"), ("C", "2"))]
        """)
    )
    argv = [
        "search",
        "--tasks",
        f"{tmp_path / 'tasks.py'}:tasks",
        "--target",
        "C",
        "--baselines",
        "A,B",
        "--dictionary",
        str(tmp_path / "dict"),
        "--out",
        str(tmp_path / "out"),
        "--eps-epochs",
        "1",
        "--width",
        "4",
        "--depth",
        "1",
        "--candidates",
        "1",
        "--rounds",
        "1",
        "--alternations",
        "1",
        "--final-epochs",
        "1",
        "--compare",
        "none",
        "--device",
        "cpu",
        "--quiet",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpsilonWarning)
        assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["closest"] in ("A", "B")
    with pytest.raises(SystemExit, match=r"no task 'Z' in .*tasks\.py:tasks \(it has A, B, C\)"):
        main([*argv[:4], "Z", *argv[5:]])
