"""``fisherx affinity`` writes affinity.json (matrices, agreement per target, cost), table.txt and the figures."""

from __future__ import annotations

import json

import pytest

from fisherx.cli.main import main


def test_affinity_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "affinity",
        "--preset",
        "pixel-digits",
        "--tasks",
        "autoencode,blur,rotate",
        "--max-train-per-label",
        "3",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--budget",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    doc = json.loads((out / "affinity.json").read_text())
    assert doc["tasks"] == ["autoencode", "blur", "rotate"] and doc["seeds"] == [0]
    assert len(doc["ftd"]) == 1 and len(doc["ahp"][0]) == 3 and len(doc["gain"][0][0]) == 3
    assert set(doc["agreement"]) == {"ahp", "gain"} and set(doc["agreement"]["ahp"]) == set(doc["tasks"])
    assert doc["cost"]["brute_force_seconds"] > 0 and doc["config"]["budget"] == 1
    text = (out / "table.txt").read_text()
    assert "brute force / FTD" in text and "Spearman" in text and text in capsys.readouterr().out
    assert (out / "matrices.png").stat().st_size > 0 and (out / "cost.png").stat().st_size > 0
    assert list((out / "cache").rglob("*.fxc"))  # the default cache lives under OUT
    with pytest.raises(SystemExit, match="unknown task.*sharpen"):
        main(argv[:4] + ["autoencode,sharpen"] + argv[5:])


def test_undefined_correlations_are_written_as_null():
    from fisherx.transfer.report import _plain

    assert _plain({"rho": [0.5, float("nan")], "x": {"tau": float("nan")}, "n": 3}) == {
        "rho": [0.5, None],
        "x": {"tau": None},
        "n": 3,
    }
    json.dumps(_plain({"v": float("nan")}), allow_nan=False)  # strict JSON accepts it
