"""TA-NAS end to end on the built-in digits tasks, the baseline dictionary on disk, and the search command."""

import json
import time
import warnings

import pytest
import torch
from test_nas_space import _one_thread  # noqa: F401  (autouse: every test here runs on one thread)

from fisherx import ftd
from fisherx.fisher import fisher_diag
from fisherx.io import FormatError, load_tree
from fisherx.models import EpsilonWarning
from fisherx.nas import Genotype, SearchSpace
from fisherx.nas.ta_nas import TaskDictionary, add_baseline, ta_nas
from fisherx.tasks import preset

# Small everything: 30 training images per label, 4-channel 2-cell networks, one FUSE round.
SEARCH = dict(candidates=2, rounds=1, alternations=2, batch_size=64, final_epochs=2, device="cpu", progress=False)
SPACE = SearchSpace.general(width=4, depth=2)


@pytest.fixture(scope="module")
def tasks():
    return {t.name: t for t in preset("digits", max_train_per_label=30)}


def _dictionary(path, tasks):
    d = TaskDictionary.create(path, arch="cnn", head_width=10, in_channels=1, image_size=8, eps_epochs=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpsilonWarning)  # 30 images per label make weak ε-networks
        for name in ("T0", "T3"):
            add_baseline(d, tasks[name], space=SPACE, **SEARCH)
    return d


def test_tiny_ta_nas_on_digits_end_to_end(tasks, tmp_path):
    start = time.perf_counter()
    d = _dictionary(tmp_path / "dict", tasks)
    assert d.names() == ["T0", "T3"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpsilonWarning)
        r = ta_nas(tasks["T2"], tmp_path / "dict", out_dir=tmp_path / "out", grow=True, **SEARCH)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"tiny TA-NAS took {elapsed:.1f} s"

    # The distances are FTDs of each baseline's ε-network against the target's, on the target's test data.
    assert set(r.distances) == {"T0", "T3"} and all(0.0 <= v <= 1.0 for v in r.distances.values())
    assert r.closest == min(r.distances, key=r.distances.get)
    # The target's ε-network follows the family's recipe, initialisation seed included, like the baselines'.
    assert r.eps["target"]["seed"] == d.family["eps"]["seed"] == r.eps["baselines"]["T3"]["seed"]
    assert r.eps["target"]["epochs"] == 10
    state, _ = load_tree(tmp_path / "out" / "target_eps_network.fx", with_meta=True)
    target_net = d.new_network()
    target_net.load_state_dict(state)
    test = tasks["T2"].load().test
    f_bb = fisher_diag(target_net.eval(), test, progress=False)
    f_ab = fisher_diag(d.eps_network("T3"), test, progress=False)
    assert float(ftd(f_ab, f_bb)) == pytest.approx(r.distances["T3"], rel=1e-6, abs=1e-9)

    # FUSE searched the closest baseline's space; random search spent the same budget in the same space.
    assert r.space == TaskDictionary(tmp_path / "dict")[r.closest].space
    assert r.result.genotype in r.space and r.result.space == r.space
    rnd = r.comparisons["random"]
    assert rnd.space == r.space and rnd.cost["candidate_epochs"] == r.result.cost["candidate_epochs"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["closest"] == r.closest and report["distances"] == r.distances
    assert "closest" in r.summary() and "random search" in r.summary()

    # grow=True added the target, and the dictionary reloads from disk with the same entries.
    again = TaskDictionary(tmp_path / "dict")
    assert again.names() == ["T0", "T3", "T2"]
    assert again["T2"].genotype == r.result.genotype and again["T2"].genotype in again["T2"].space
    net = again.eps_network("T2")
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), target_net.state_dict().values(), strict=True)
    )


def test_dictionary_refuses_what_it_cannot_compare_or_read(tasks, tmp_path):
    d = TaskDictionary.create(tmp_path, arch="cnn", head_width=2, in_channels=1, image_size=8)
    with pytest.raises(FileExistsError):
        TaskDictionary.create(tmp_path, arch="cnn", head_width=2, in_channels=1, image_size=8)
    with pytest.raises(ValueError, match="has 5 labels but the dictionary's networks have 2 outputs"):
        d.check_task(tasks["T2"].load(), "T2")
    with pytest.raises(ValueError, match="no baseline tasks"):
        ta_nas(tasks["T0"], d, **SEARCH)
    g = SPACE.sample(torch.Generator().manual_seed(0))
    net = d.new_network()
    d.add("T0", task={}, eps_network=net, eps={}, space=SearchSpace.from_genotypes(g), genotype=g)
    with pytest.raises(ValueError, match="already has a baseline 'T0'"):
        d.add("T0", task={}, eps_network=net, eps={}, space=SearchSpace.from_genotypes(g), genotype=g)
    with pytest.raises(ValueError, match="not usable as a folder name"):
        d.add("../evil", task={}, eps_network=net, eps={}, space=SearchSpace.from_genotypes(g), genotype=g)
    other = Genotype([[("conv_7x7", 0), ("conv_7x7", 1)]] * 3, [[("conv_7x7", 0), ("conv_7x7", 1)]] * 3)
    if "conv_7x7" not in g.ops():
        with pytest.raises(ValueError, match="outside the space"):
            d.add("T9", task={}, eps_network=net, eps={}, space=SearchSpace.from_genotypes(g), genotype=other)
    # A damaged weights file is refused, naming the file.
    f = tmp_path / "T0" / "eps_network.fx"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="eps_network.fx"):
        TaskDictionary(tmp_path).eps_network("T0")
    (tmp_path / "dictionary.json").write_text('{"format": "fisherx.task_dictionary", "version": 9}')
    with pytest.raises(FormatError, match="version 9 is not supported"):
        TaskDictionary(tmp_path)


def test_search_command_builds_the_dictionary_and_writes_the_report(tmp_path, capsys):
    from fisherx.cli import main

    argv = [
        "search",
        "--target",
        "T1",
        "--baselines",
        "T0",
        "--dictionary",
        str(tmp_path / "dict"),
        "--out",
        str(tmp_path / "out"),
        "--max-train-per-label",
        "20",
        "--eps-epochs",
        "5",
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
        "--batch-size",
        "64",
        "--final-epochs",
        "1",
        "--device",
        "cpu",
        "--quiet",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpsilonWarning)
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "TA-NAS for T1" in out and "T0" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["closest"] == "T0" and set(report["comparisons"]) == {"random"}
    assert (tmp_path / "out" / "summary.txt").read_text().startswith("TA-NAS for T1")
    assert TaskDictionary(tmp_path / "dict").names() == ["T0"]


def test_ta_nas_reports_the_cost_of_every_stage(tasks, tmp_path):
    """Wall time, device time and peak memory per stage, the device and the candidates trained, in the result, its
    summary and report.json."""
    d = TaskDictionary.create(tmp_path / "dict", arch="cnn", head_width=10, in_channels=1, image_size=8, eps_epochs=2)
    search = {**SEARCH, "final_epochs": 1, "alternations": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpsilonWarning)
        add_baseline(d, tasks["T0"], space=SPACE, **search)
        r = ta_nas(tasks["T1"], d, compare=(), out_dir=tmp_path / "out", **search)
    c = r.cost
    assert list(c["stages"]) == ["eps_networks", "fishers", "distances", "search", "final_training"]
    for stage in c["stages"].values():
        assert stage["wall_s"] > 0 and stage["device_s"] >= 0 and stage["peak_rss_mb"] > 10
        assert stage["peak_cuda_mb"] is None  # CPU run
    assert c["stages"]["search"] == r.result.cost["stages"]["search"]
    assert c["device"].startswith("cpu") and c["candidates_trained"] == 2 == r.result.cost["candidates_trained"]
    assert c["peak_rss_mb"] == max(s["peak_rss_mb"] for s in c["stages"].values())
    assert c["stages"]["eps_networks"]["reused"] is False
    assert c["nondeterministic_ops"] == []  # every kernel used on the CPU here is deterministic
    text = r.summary()
    assert "candidates trained" in text and all(s in text for s in c["stages"])
    assert "2 candidates trained" in r.result.summary() and "peak memory" in r.result.summary()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["cost"]["stages"]["fishers"] == c["stages"]["fishers"]
    assert report["result"]["cost"]["stages"]["final_training"]["wall_s"] > 0


def test_retrain_command_rebuilds_the_architecture_from_its_json_file_alone(tmp_path, capsys):
    from fisherx.cli import main
    from fisherx.nas import fuse
    from fisherx.nas.retrain import retrain

    t2 = preset("digits", max_train_per_label=20)[2]
    space = SearchSpace.general(width=4, depth=2)
    res = fuse(
        space,
        t2,
        candidates=1,
        rounds=1,
        alternations=1,
        final_epochs=1,
        batch_size=64,
        device="cpu",
        progress=False,
        out_dir=tmp_path / "search",
    )
    genotype_file = tmp_path / "search" / "fuse_genotype.json"
    argv = [
        "retrain",
        "--genotype",
        str(genotype_file),
        "--preset",
        "digits",
        "--task",
        "T2",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "re"),
        "--max-train-per-label",
        "20",
        "--device",
        "cpu",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    assert "T2: test accuracy" in capsys.readouterr().out
    out = json.loads((tmp_path / "re" / "retrain_result.json").read_text())
    assert out["format"] == "fisherx.retrain_result" and out["source"] == str(genotype_file)
    assert Genotype.from_dict_with_space(out["genotype"]) == (res.genotype, space)
    assert out["params"] == space.num_params(res.genotype, 1, 5) == res.params
    assert 0.0 <= out["test_accuracy"] <= 1.0 and out["epochs"] == 2 and out["task"]["name"] == "T2"
    c = out["cost"]
    assert c["stages"]["final_training"]["wall_s"] > 0 and c["device"].startswith("cpu")
    assert c["candidates_trained"] == 1 and c["peak_rss_mb"] > 10
    weights = load_tree(tmp_path / "re" / "retrain_weights.fx")
    net = space.build(res.genotype, 1, 5)
    net.load_state_dict(weights)  # the saved weights fit the architecture rebuilt from the file
    assert not (tmp_path / "re" / "retrain_checkpoint.fx").exists()
    # One seed fixes the result: the library call with the same settings gives the same accuracy.
    again = retrain(genotype_file, t2, epochs=2, seed=3, batch_size=64, device="cpu")
    assert again["test_accuracy"] == out["test_accuracy"] and again["val_accuracy"] == out["val_accuracy"]

    # A file without a recorded space needs the skeleton; without it the command says so in one line.
    res.genotype.save(tmp_path / "bare.json")
    bare = [
        "retrain",
        "--genotype",
        str(tmp_path / "bare.json"),
        "--task",
        "T2",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "bare"),
        "--max-train-per-label",
        "20",
        "--device",
        "cpu",
    ]
    with pytest.raises(SystemExit, match="records no search space.*--width, --depth"):
        main(bare)
    assert main(bare + ["--width", "4", "--depth", "2"]) == 0
    assert json.loads((tmp_path / "bare" / "retrain_result.json").read_text())["params"] == res.params
    with pytest.raises(SystemExit, match="fisherx retrain: .*missing.json: cannot read"):
        main(["retrain", "--genotype", str(tmp_path / "missing.json"), "--task", "T2", "--out", str(tmp_path)])
