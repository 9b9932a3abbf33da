"""FUSE and random search: selection, the separation of weight and α steps, distinct candidates, exact resume."""

import json

import pytest
import torch
from test_nas_space import _one_thread  # noqa: F401  (autouse: every test here runs on one thread)

from fisherx.nas import Genotype, SearchSpace
from fisherx.nas import _common as fuse_mod  # the home of SearchFiles, patched to simulate a kill
from fisherx.nas.fuse import FuseRound, fuse
from fisherx.nas.network import build as build_network
from fisherx.nas.random_search import random_search
from fisherx.tasks import preset

ZERO = Genotype([[("zero", 0), ("zero", 1)]] * 3, [[("zero", 0), ("zero", 1)]] * 3)
CONV = Genotype([[("conv_3x3", 0), ("conv_3x3", 1)]] * 3, [[("conv_3x3", 0), ("conv_3x3", 1)]] * 3)
SMALL = dict(candidates=2, rounds=3, alternations=2, batch_size=128, final_epochs=1, device="cpu", progress=False)


@pytest.fixture(scope="module")
def digits():
    return preset("digits")[2].load()  # T2: 0, 1, 2, 3, anything else


@pytest.fixture(scope="module")
def tiny():
    return preset("digits", max_train_per_label=20)[2].load()  # T2 again, 3 batches of 32 per epoch


def _interrupt_at_step(k, search, *args, **kwargs):
    """Run ``search`` until its k-th weight step, which raises KeyboardInterrupt as a kill there would stop it."""
    real, count = FuseRound.weight_step, [0]

    def step(self, x, y):
        count[0] += 1
        if count[0] == k:
            raise KeyboardInterrupt
        return real(self, x, y)

    FuseRound.weight_step = step
    try:
        with pytest.raises(KeyboardInterrupt):
            search(*args, **kwargs)
    finally:
        FuseRound.weight_step = real


def _nets(gs, seed=0):
    torch.manual_seed(seed)
    return [build_network(g, 1, 5, width=4, depth=2) for g in gs]


def test_weight_steps_move_only_weights_and_alpha_steps_only_alpha(digits):
    r = FuseRound(_nets([CONV, ZERO]), lr=1e-2, alpha_lr=0.1)
    x, y = digits.train[0][:64], digits.train[1][:64]
    assert torch.allclose(r.alpha, torch.full((2,), 0.5))  # α starts at 1/|C|

    def snapshot():
        return [t.detach().clone() for t in r.nets.state_dict().values()]

    alpha0, w0 = r.alpha.detach().clone(), snapshot()
    r.weight_step(x, y)
    assert torch.equal(r.alpha.detach(), alpha0), "a weight step changed α"
    assert any(not torch.equal(a, b) for a, b in zip(w0, snapshot(), strict=True)), "a weight step changed no weight"
    w1 = snapshot()
    r.alpha_phase(
        *digits.val, epochs=2, batch_size=32, gen=torch.Generator().manual_seed(0), device=torch.device("cpu")
    )
    assert not torch.equal(r.alpha.detach(), alpha0), "the α phase left α unchanged"
    # Weights *and* BatchNorm buffers stay exactly as they were.
    assert all(torch.equal(a, b) for a, b in zip(w1, snapshot(), strict=True)), "an α step changed the candidates"


def test_mixed_output_is_the_softmax_weighted_sum_of_logits():
    r = FuseRound(_nets([CONV, ZERO, CONV]), lr=1e-3, alpha_lr=0.1)
    logits = torch.randn(3, 7, 5)
    alpha = torch.tensor([0.3, -1.0, 2.0])
    w = torch.softmax(alpha, 0)
    assert torch.allclose(r.mixed(logits, alpha), w[0] * logits[0] + w[1] * logits[1] + w[2] * logits[2])


def test_alternation_picks_convolutions_over_all_zero_cells(digits):
    # All-zero cells give the classifier nothing (constant logits); convolutions learn the task.
    r = FuseRound(_nets([ZERO, CONV]), lr=1e-2, alpha_lr=0.1)
    gen = torch.Generator().manual_seed(0)
    from fisherx.nas._common import batches

    x, y = digits.train
    for _ in range(3):
        for idx in batches(len(y), 128, gen):
            r.weight_step(x[idx], y[idx])
        info = r.alpha_phase(*digits.val, epochs=1, batch_size=64, gen=gen, device=torch.device("cpu"))
    assert int(torch.argmax(r.alpha)) == 1, r.alpha
    assert info["candidate_val_accuracy"][1] > info["candidate_val_accuracy"][0] + 0.2


def test_fuse_replaces_an_all_zero_incumbent_and_samples_distinct_candidates(digits, tmp_path):
    space = SearchSpace(ops=("zero", "conv_3x3", "max_pool_3x3"), nodes=(3,), width=4, depth=2)
    res = fuse(space, digits, init=ZERO, seed=1, out_dir=tmp_path, **{**SMALL, "rounds": 2})
    first = res.history[0]
    assert Genotype.from_dict(first["candidates"][0]) == ZERO and first["incumbent"] == 0
    assert first["winner"] != 0 and res.genotype != ZERO
    for h in res.history:
        keys = [Genotype.from_dict(c).key() for c in h["candidates"]]
        assert len(keys) == len(set(keys)) == 3  # C = 2 new + the incumbent, all different
        assert len(h["alpha"]) == 3 and h["winner"] == max(range(3), key=lambda i: h["alpha"][i])
    assert res.genotype in space
    assert 0.0 <= res.test_accuracy <= 1.0 and res.params == space.num_params(res.genotype, 1, 5)
    c = res.cost
    assert c["rounds"] == 2 and c["device"].startswith("cpu") and c["search_s"] > 0
    assert c["candidate_epochs"] == sum(len(h["candidates"]) * len(h["alternations"]) for h in res.history)
    # One JSON line per round, the genotype and result files, all readable.
    lines = (tmp_path / "fuse_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]
    assert Genotype.load_with_space(tmp_path / "fuse_genotype.json") == (res.genotype, space)  # skeleton included


def test_killed_search_resumes_to_the_uninterrupted_result(tiny, tmp_path, monkeypatch):
    space = SearchSpace(width=4, depth=1)
    whole = fuse(space, tiny, seed=3, out_dir=tmp_path / "a", **SMALL)

    real_save = fuse_mod.SearchFiles.save_round
    calls = []

    def save_then_die(self, state, history):
        real_save(self, state, history)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed right after round 1's checkpoint

    monkeypatch.setattr(fuse_mod.SearchFiles, "save_round", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fuse(space, tiny, seed=3, out_dir=tmp_path / "b", **SMALL)
    monkeypatch.setattr(fuse_mod.SearchFiles, "save_round", real_save)
    assert len((tmp_path / "b" / "fuse_log.jsonl").read_text().splitlines()) == 2
    resumed = fuse(space, tiny, seed=3, out_dir=tmp_path / "b", **SMALL)

    def strip(hs):
        return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in hs]

    assert strip(resumed.history) == strip(whole.history)  # same candidates, α, losses, accuracies
    assert resumed.genotype == whole.genotype and resumed.test_accuracy == whole.test_accuracy
    # A finished search in the same directory returns its result instead of searching again.
    again = fuse(space, tiny, seed=3, out_dir=tmp_path / "b", **SMALL)
    assert again.genotype == whole.genotype and strip(again.history) == strip(whole.history)
    # A different search in the same directory is refused, naming what differs.
    with pytest.raises(ValueError, match="lr: saved 0.003, now 0.01"):
        fuse(space, tiny, seed=3, out_dir=tmp_path / "b", **{**SMALL, "lr": 0.01})


def test_same_seed_same_search_different_seed_different_candidates(tiny):
    space = SearchSpace(width=4, depth=2)
    kw = {**SMALL, "rounds": 1, "alternations": 1}
    a, b, c = (fuse(space, tiny, seed=s, **kw) for s in (5, 5, 6))
    assert a.history[0]["candidates"] == b.history[0]["candidates"] and a.history[0]["alpha"] == b.history[0]["alpha"]
    assert a.history[0]["candidates"] != c.history[0]["candidates"]


def test_random_search_spends_the_budget_on_distinct_candidates_and_resumes(tiny, tmp_path):
    space = SearchSpace(width=4, depth=1)
    kw = dict(
        budget=5,
        epochs_per_candidate=2,
        batch_size=32,
        final_epochs=1,
        device="cpu",
        progress=False,
        checkpoint_every=2,
    )
    whole = random_search(space, tiny, seed=0, **kw)
    assert whole.method == "random" and whole.cost["candidate_epochs"] == 4 and len(whole.history) == 2
    assert whole.history[0]["genotype"] != whole.history[1]["genotype"]
    assert whole.cost["candidates_trained"] == 2 and whole.cost["weight_steps"] == 12
    best = max(whole.history, key=lambda h: h["val_accuracy"])
    assert whole.genotype == Genotype.from_dict(best["genotype"])

    # Interrupted inside the second candidate (its 2nd of 6 steps; the checkpoint after step 6 + 2 = 8 of 12)...
    _interrupt_at_step(10, random_search, space, tiny, seed=0, out_dir=tmp_path, **kw)
    from fisherx.io import load_tree

    state = load_tree(tmp_path / "random_checkpoint.fx")
    assert len(state["history"]) == 1 and len(state["inflight"]["position"]["losses"]) == 2
    # ... the rerun continues there and ends exactly where an uninterrupted search does.
    resumed = random_search(space, tiny, seed=0, out_dir=tmp_path, **kw)

    def strip(hs):
        return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in hs]

    assert strip(resumed.history) == strip(whole.history) and resumed.genotype == whole.genotype
    assert all(
        torch.equal(p, q)
        for p, q in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="trains no candidate"):
        random_search(space, tiny, budget=1, epochs_per_candidate=2)


# A search small enough to kill and rerun in a few seconds: 2 + 1 candidates of 4 channels and one cell, 20 images
# per label (3 batches of 32 after the validation split), 2 rounds × 2 alternations × 2 weight epochs = 24 steps.
KILL_KW = dict(
    candidates=2,
    rounds=2,
    alternations=2,
    weight_epochs=2,
    alpha_epochs=2,
    alpha_tol=0.0,
    batch_size=32,
    final_epochs=2,
    device="cpu",
    progress=False,
    checkpoint_every=3,
    seed=11,
)


@pytest.mark.parametrize("kill_seed", [2024, *(pytest.param(s, marks=pytest.mark.slow) for s in range(1, 9))])
def test_search_killed_at_a_random_step_resumes_bit_exactly(tmp_path, kill_seed):
    """SIGKILL a search process just before weight step k (k drawn by a seeded generator, so the test is
    reproducible), rerun the same call, and require the exact α, losses, genotype and final weights of a run that
    was never interrupted."""
    import random
    import signal
    import subprocess
    import sys
    import textwrap

    from fisherx.io import load_tree

    space = SearchSpace(width=4, depth=1)
    data = preset("digits", max_train_per_label=20)[2].load()
    whole = fuse(space, data, **KILL_KW)
    total = whole.cost["weight_steps"]
    assert total == 24
    kill_at = random.Random(kill_seed).randint(2, total)  # any step but the first (no checkpoint before it)
    code = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from fisherx.nas import SearchSpace, fuse
        from fisherx.nas.fuse import FuseRound
        from fisherx.tasks import preset
        real, count = FuseRound.weight_step, [0]
        def step(self, x, y):
            count[0] += 1
            if count[0] == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a real kill
            return real(self, x, y)
        FuseRound.weight_step = step
        fuse(SearchSpace(width=4, depth=1), preset("digits", max_train_per_label=20)[2].load(),
             out_dir={str(tmp_path)!r}, **{KILL_KW!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    steps_done = 0  # killed before the first checkpoint: the rerun starts from the beginning
    if (tmp_path / "fuse_checkpoint.fx").exists():
        state = load_tree(tmp_path / "fuse_checkpoint.fx")
        steps_done = sum(h["weight_steps"] for h in state["history"])
        if state.get("inflight") is not None:  # a mid-round checkpoint: it holds the round's exact position
            steps_done += state["inflight"]["steps"]["weight_steps"] + len(state["inflight"]["position"]["losses"])
    # The last checkpoint before the kill: every 3 steps (a round's 12 steps end on one too).
    assert steps_done == (kill_at - 1) // 3 * 3, (kill_at, steps_done)
    assert not (tmp_path / "fuse_result.json").exists()

    resumed = fuse(space, data, out_dir=tmp_path, **KILL_KW)
    for a, b in zip(resumed.history, whole.history, strict=True):
        assert torch.equal(torch.tensor(a["alpha"]), torch.tensor(b["alpha"]))
        assert [x["alpha"] for x in a["alternations"]] == [x["alpha"] for x in b["alternations"]]
        assert [x["train_loss"] for x in a["alternations"]] == [x["train_loss"] for x in b["alternations"]]
    assert resumed.genotype == whole.genotype
    assert all(
        torch.equal(p, q)
        for p, q in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(), strict=True)
    )
    # The killed run's time up to its last checkpoint is counted too (the steps it lost after it are not).
    assert resumed.cost["stages"]["search"]["runs"] == (2 if steps_done else 1)


def test_mid_round_checkpoint_holds_the_whole_training_state(tiny, tmp_path):
    """Every piece a bit-exact resume needs is in the file: weights, α, both Adam states, the batch position, the
    batch-order generator, the search generator and the global random states."""
    from fisherx.io import load_tree

    _interrupt_at_step(5, fuse, SearchSpace(width=4, depth=1), tiny, out_dir=tmp_path, **KILL_KW)
    state = load_tree(tmp_path / "fuse_checkpoint.fx")
    assert state["round"] == -1 and state["history"] == []
    inflight = state["inflight"]
    assert inflight["position"]["epoch"] == 0 and inflight["position"]["batch"] == 3  # after epoch 0's 3rd step
    assert len(inflight["position"]["losses"]) == 3 and inflight["position"]["epoch_gen"] is not None
    assert inflight["alpha"].shape == (2,) and len(inflight["candidates"]) == 2
    assert all(s["step"] == 3 for s in inflight["w_opt"]["state"].values())  # Adam's step counts
    assert set(inflight["a_opt"]) == {"state", "param_groups"}
    assert {"torch", "cuda", "numpy", "random"} <= set(state["rng"]) and state["generator"].dtype == torch.uint8
    assert state["cost"]["search"]["wall_s"] > 0


def test_a_round_stops_when_alpha_has_converged(tiny):
    # With a tolerance no α change can exceed, every round ends after its first alternation; with none, it runs all.
    space = SearchSpace(width=4, depth=2)
    kw = {**SMALL, "rounds": 1, "alternations": 3}
    converged = fuse(space, tiny, seed=0, alpha_tol=1e9, **kw)
    assert [len(h["alternations"]) for h in converged.history] == [1]
    assert converged.cost["candidate_epochs"] == 2  # 2 candidates × 1 weight epoch
    full = fuse(space, tiny, seed=0, alpha_tol=0.0, **kw)
    assert [len(h["alternations"]) for h in full.history] == [3]
    assert all(a["alpha_change"] > 0 for a in full.history[0]["alternations"])


# PyTorch's own words when an operation without a deterministic implementation runs under
# use_deterministic_algorithms(True, warn_only=True) (here: the CUDA backward of adaptive average pooling).
CUDA_ALERT = (
    "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
    "'torch.use_deterministic_algorithms(True, warn_only=True)'. You can file an issue at ..."
)


def test_nondeterministic_operation_is_reported_once_simulated_on_cpu(monkeypatch):
    """No CPU kernel used here is nondeterministic, so the CUDA alert is simulated: the weight step raises PyTorch's
    warning exactly as the CUDA kernel would. The search warns once per operation and device (not once per step),
    records the operation in its cost, and passes every other warning on unchanged."""
    import warnings

    from fisherx.nas import determinism
    from fisherx.nas.determinism import NondeterminismWarning

    real = FuseRound.weight_step
    seen = {}

    def step(self, x, y):
        # The flags a search runs under, as seen from inside it.
        seen.update(
            det=torch.are_deterministic_algorithms_enabled(),
            warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn=(torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
            cublas=__import__("os").environ.get("CUBLAS_WORKSPACE_CONFIG"),
        )
        warnings.warn(CUDA_ALERT, UserWarning, stacklevel=2)
        warnings.warn("an unrelated warning", RuntimeWarning, stacklevel=2)
        return real(self, x, y)

    monkeypatch.setattr(FuseRound, "weight_step", step)
    monkeypatch.setattr(determinism, "_WARNED", set())
    data = preset("digits", max_train_per_label=20)[2].load()
    kw = {**KILL_KW, "rounds": 1, "alternations": 1, "final_epochs": 1}
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fuse(SearchSpace(width=4, depth=1), data, **kw)
        again = fuse(SearchSpace(width=4, depth=1), data, **kw)
    ours = [w for w in caught if issubclass(w.category, NondeterminismWarning)]
    assert len(ours) == 1 and "adaptive_avg_pool2d_backward_cuda" in str(ours[0].message)
    assert "on cpu" in str(ours[0].message)
    assert not any("does not have a deterministic" in str(w.message) for w in caught)  # absorbed, not repeated
    assert sum("an unrelated warning" in str(w.message) for w in caught) == 2 * res.cost["weight_steps"]
    assert (
        res.cost["nondeterministic_ops"] == again.cost["nondeterministic_ops"] == ["adaptive_avg_pool2d_backward_cuda"]
    )
    assert seen == {"det": True, "warn_only": True, "cudnn": (True, False), "cublas": ":4096:8"}
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


def test_a_search_leaves_the_callers_random_streams_alone():
    """One seed controls the search; the caller's torch, numpy and random streams continue as if it never ran."""
    import random

    import numpy as np

    def draws():
        return torch.rand(3), np.random.rand(3), random.random()

    data = preset("digits", max_train_per_label=20)[2].load()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expect = draws()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    fuse(SearchSpace(width=4, depth=1), data, **{**KILL_KW, "rounds": 1, "alternations": 1, "final_epochs": 1})
    got = draws()
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1]) and got[2] == expect[2]


def test_the_network_avoids_pooling_with_a_nondeterministic_cuda_backward():
    net = build_network(CONV, 1, 5, width=4, depth=2)
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in net.modules())


def test_warnings_are_passed_on_when_a_search_is_interrupted(tiny, monkeypatch):
    import warnings

    from fisherx.nas import determinism
    from fisherx.nas.determinism import NondeterminismWarning

    def step(self, x, y):
        warnings.warn(CUDA_ALERT, UserWarning, stacklevel=2)
        warnings.warn("something the user should see", RuntimeWarning, stacklevel=2)
        raise KeyboardInterrupt

    monkeypatch.setattr(FuseRound, "weight_step", step)
    monkeypatch.setattr(determinism, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught, pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("always")
        fuse(SearchSpace(width=4, depth=1), tiny, **{**KILL_KW, "rounds": 1})
    assert [w.category for w in caught] == [NondeterminismWarning, RuntimeWarning]  # in the order raised


def test_resuming_in_another_environment_warns_that_bits_may_differ(tiny, tmp_path):
    import warnings

    from fisherx.io import load_tree, save_tree
    from fisherx.nas.determinism import NondeterminismWarning

    kw = {**KILL_KW, "rounds": 1, "alternations": 1}
    _interrupt_at_step(5, fuse, SearchSpace(width=4, depth=1), tiny, out_dir=tmp_path, **kw)
    state = load_tree(tmp_path / "fuse_checkpoint.fx")
    assert state["environment"] == {"torch": torch.__version__, "threads": 1, "device": "cpu"}
    state["environment"]["threads"] = 16  # as if written by a process with 16 threads
    save_tree(tmp_path / "fuse_checkpoint.fx", state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fuse(SearchSpace(width=4, depth=1), tiny, out_dir=tmp_path, **kw)
    msgs = [str(w.message) for w in caught if issubclass(w.category, NondeterminismWarning)]
    assert len(msgs) == 1 and "threads 16 then, 1 now" in msgs[0]


def test_cost_meter_separates_waiting_from_work_and_adds_up_runs():
    """On the CPU, device time is the process's CPU time: a stage that sleeps has wall time but next to no device
    time; a stage that computes has both. Stages run again (or merged from a checkpoint) add up and count runs."""
    import time

    from fisherx.nas.cost import CostMeter

    meter = CostMeter(torch.device("cpu"))
    with meter.stage("wait"):
        time.sleep(0.3)
    with meter.stage("work"):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.3:
            torch.randn(64, 64) @ torch.randn(64, 64)
    wait, work = meter.stages["wait"], meter.stages["work"]
    assert wait["wall_s"] >= 0.3 and wait["device_s"] < 0.1
    assert work["device_s"] > 0.05 and work["peak_cuda_mb"] is None and work["peak_rss_mb"] > 10
    resumed = CostMeter(torch.device("cpu"), meter.to_dict()["stages"])  # as a resume loads it from a checkpoint
    with resumed.stage("wait"):
        time.sleep(0.05)
    assert resumed.stages["wait"]["runs"] == 2 and resumed.stages["wait"]["wall_s"] >= 0.35
    with resumed.stage("work"):
        snap = resumed.snapshot()  # an open stage is counted up to now (what a checkpoint stores)...
        assert snap["work"]["runs"] == 2 and resumed.stages["work"]["runs"] == 1  # ...without being closed
    assert resumed.stages["work"]["runs"] == 2
