"""`fisherx demo` at its smallest size: every promised file, a report that names no missing figure, a resume that
recomputes nothing."""

import contextlib
import json
import re
import time
import warnings

import pytest

from fisherx import cli
from fisherx.experiments import demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # Progress on, output sent to a file (as in a log or CI): what it writes there is checked below.
    with warnings.catch_warnings(), open(out.parent / "demo.log", "w") as log:
        warnings.simplefilter("ignore")  # 3-epoch networks miss their ε by design at this size
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            assert cli.main(["demo", "--size", "smallest", "--out", str(out)]) == 0
    return out


def test_a_redirected_log_has_plain_lines_only(demo_run):
    text = (demo_run.parent / "demo.log").read_text()
    assert "\r" not in text and "\x1b" not in text, text[:2000]
    lines = text.splitlines()
    # One line per stage, the search included (TA-NAS is most of the demo's time).
    for head in ("task distances [", "task distances: ", "FUSE [", "FUSE: ", "TA-NAS: the closest baseline to T2"):
        assert any(line.startswith(head) for line in lines), (head, text[:3000])


def test_every_promised_file_is_written(demo_run):
    for name in demo.OUTPUT_FILES:
        f = demo_run / name
        assert f.is_file() and f.stat().st_size > 0, name
    for png in ("heatmaps.png", "atlas.png"):
        assert (demo_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_embeds_existing_figures_and_states_the_numbers(demo_run):
    report = (demo_run / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(figures) == {"heatmaps.png", "atlas.png"}
    assert all((demo_run / f).is_file() for f in figures)
    summary = json.loads((demo_run / "summary.json").read_text())
    for arch in ("mlp", "cnn"):
        assert f"### {arch}" in report
        mean = summary["ftd_mean"][arch]
        assert all(mean[i][i] == 0.0 for i in range(4))
        assert all(0.0 <= v <= 1.0 for row in mean for v in row)
        assert f"{mean[0][1]:.3f} ±" in report  # the table in the report is the computed matrix
    nas = summary["ta_nas"]
    assert nas["target"] == "T2" and nas["closest"] in {"T0", "T1", "T3"}
    assert nas["fuse"]["candidate_epochs"] == nas["random"]["candidate_epochs"]  # equal budgets
    assert f"Closest: **{nas['closest']}**" in report
    assert "fisherx demo --size smallest" in report


def test_rerun_resumes_from_the_cache(demo_run):
    before = json.loads((demo_run / "summary.json").read_text())
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["demo", "--size", "smallest", "--out", str(demo_run), "--quiet"]) == 0
    after = json.loads((demo_run / "summary.json").read_text())
    assert not any(k.endswith(".miss") and v for k, v in after["cache"].items()), after["cache"]
    assert after["ftd_mean"] == before["ftd_mean"] and after["ta_nas"]["fuse"] == before["ta_nas"]["fuse"]
    assert time.monotonic() - start < sum(before["timings_s"].values())


def test_report_states_the_papers_claims_beside_their_numbers(demo_run):
    from fisherx.experiments.distances import TaskDistanceResult
    from fisherx.experiments.reproduce import check_claims

    report = (demo_run / "report.md").read_text()
    claims = json.loads((demo_run / "summary.json").read_text())["claims"]
    assert "## The papers' claims on this run" in report
    for c in claims["claims"]:
        assert f"**{c['text']}** — {c['verdict']}" in report
    check_claims(claims, {"empirical": TaskDistanceResult.from_json(demo_run / "result.json")})
