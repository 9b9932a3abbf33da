"""torch.distributed primitives with 2 gloo processes on 127.0.0.1."""

import textwrap
import time

import pytest
import torch
from distributed_util import torchrun

from fisherx import distributed

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def test_outside_a_group_everything_is_local():
    assert distributed.rank_and_world() == (0, 1)
    assert distributed.is_main_process() and not distributed.is_distributed()
    assert distributed.assigned(list(range(5))) == [0, 1, 2, 3, 4]
    assert distributed.assigned(list(range(5)), rank=1, world=2) == [1, 3]
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        distributed.assigned([1], rank=2, world=2)
    x = torch.arange(3.0)
    (y,), n = distributed.weighted_mean([x], 4)
    assert n == 4 and torch.equal(x, y)


def test_bad_timeout_is_named(monkeypatch):
    monkeypatch.setenv("FISHERX_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="FISHERX_DIST_TIMEOUT"):
        distributed.timeout()


def test_weighted_mean_over_two_ranks(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent("""
        import sys, torch
        from fisherx import distributed
        assert distributed.init_from_env()
        rank, world = distributed.rank_and_world()
        n = 3 if rank == 0 else 5                       # unequal shards
        x = torch.full((2, 3), float(rank + 1), dtype=torch.float32)
        (mean,), total = distributed.weighted_mean([x], n)
        expected = (3 * 1.0 + 5 * 2.0) / 8
        assert total == 8, total
        assert mean.dtype == torch.float32 and torch.allclose(mean, torch.full((2, 3), expected)), mean
        assert distributed.assigned(list("abcde")) == (["a", "c", "e"] if rank == 0 else ["b", "d"])
        distributed.barrier()
        print(f"rank {rank} ok")
    """)
    )
    res = torchrun([str(script)])
    assert res.returncode == 0, res.stderr[-3000:]


def test_a_dead_rank_fails_the_job_within_the_timeout(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent("""
        import os, torch
        from fisherx import distributed
        distributed.init_from_env()
        rank, _ = distributed.rank_and_world()
        if rank == 1:
            os._exit(9)                                  # dies without a word, like a killed process
        distributed.all_reduce_sum([torch.ones(4)])      # would wait forever without a timeout
        print("unreachable")
    """)
    )
    start = time.monotonic()
    res = torchrun([str(script)], env={"FISHERX_DIST_TIMEOUT": "20"}, timeout=100)
    assert res.returncode != 0
    assert "unreachable" not in res.stdout
    assert time.monotonic() - start < 90


def test_distributed_fisher_equals_the_single_process_fisher(tmp_path):
    """Each of 2 ranks reads half the samples (unequal halves); every rank must end with the Fisher of all of them."""
    import fisherx

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
    ).double()
    x = torch.randn(37, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (37,))
    torch.save({"model": model.state_dict(), "x": x, "y": y}, tmp_path / "inputs.pt")
    fisherx.fisher_diag(model, (x, y), progress=False).save(tmp_path / "reference.fx")
    # Bootstrap: each rank weights its shard with its own seed (rank mixed in: shard indices restart at 0), and the
    # replicates' weighted sums and weight totals add up: F_r = (W0_r·F0_r + W1_r·F1_r) / (W0_r + W1_r).
    parts = [
        fisherx.fisher_diag(model, (x[sl], y[sl]), progress=False, bootstrap=4, bootstrap_seed=5 + (r << 40))
        for r, sl in enumerate((slice(0, 20), slice(20, 37)))
    ]
    w = torch.stack([p.replicate_weights for p in parts])  # (2, R)
    boot = {
        n: sum(p.replicates[n] * w[r].reshape(-1, *[1] * p[n].dim()) for r, p in enumerate(parts))
        / w.sum(0).reshape(-1, *[1] * parts[0][n].dim())
        for n in parts[0]
    }
    torch.save(boot, tmp_path / "boot.pt")
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(f"""
        import torch
        import fisherx
        from fisherx import distributed
        assert distributed.init_from_env()
        rank, world = distributed.rank_and_world()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * 6 * 6, 5)).double()
        model.load_state_dict(inputs["model"])
        shard = slice(0, 20) if rank == 0 else slice(20, 37)
        f = fisherx.fisher_diag(model, (inputs["x"][shard], inputs["y"][shard]), progress=False)
        ref = fisherx.FisherDiag.load({str(tmp_path / "reference.fx")!r})
        assert f.n_samples == 37, f.n_samples
        for name in ref:
            torch.testing.assert_close(f[name], ref[name], rtol=1e-12, atol=0)
        fb = fisherx.fisher_diag(model, (inputs["x"][shard], inputs["y"][shard]), progress=False, bootstrap=4,
                                 bootstrap_seed=5)
        boot = torch.load({str(tmp_path / "boot.pt")!r})
        for name in ref:
            torch.testing.assert_close(fb[name], ref[name], rtol=1e-12, atol=0)
            torch.testing.assert_close(fb.replicates[name], boot[name], rtol=1e-12, atol=0)
        print(f"rank {{rank}} ok")
    """)
    )
    res = torchrun([str(script)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 0 ok" in res.stdout and "rank 1 ok" in res.stdout
