"""task_distances under torchrun: 2 CPU ranks on gloo split the units of work and assemble the same matrices."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from distributed_util import torchrun

import fisherx
from fisherx.tasks import preset

ARGS = dict(archs=["mlp"], seeds=[0, 1], epochs=2, fisher_samples=64, epsilon=None, progress=False)

SCRIPT = textwrap.dedent("""
    import json, sys
    import fisherx
    from fisherx import distributed as fxd
    from fisherx.tasks import preset
    assert fxd.init_from_env()
    r = fisherx.task_distances(preset("digits")[:3], cache_dir=sys.argv[1], **eval(sys.argv[2]))
    rank, _ = fxd.rank_and_world()
    with open(f"{sys.argv[3]}/rank{rank}.json", "w") as f:
        json.dump({"stats": r.stats, "distances": r.distances["mlp"].tolist()}, f)
""")


def test_two_ranks_split_the_units_and_agree(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = torchrun([str(script), str(tmp_path / "cache"), repr(ARGS), str(tmp_path)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 2 seeds × 3 tasks = 6 networks and 2 × 3 × 3 = 18 Fishers, each computed by exactly one rank.
    for kind, total in (("network", 6), ("fisher", 18)):
        stores = [r["stats"].get(f"{kind}.store", 0) for r in ranks]
        assert sum(stores) == total and min(stores) > 0, (kind, stores)
    np.testing.assert_array_equal(ranks[0]["distances"], ranks[1]["distances"])
    # A single process reading the same cache recomputes nothing and finds the same matrices.
    again = fisherx.task_distances(preset("digits")[:3], cache_dir=tmp_path / "cache", **ARGS)
    assert again.stats == {"network.hit": 6, "fisher.hit": 18}
    np.testing.assert_array_equal(again.distances["mlp"], np.asarray(ranks[0]["distances"]))


def test_distributed_needs_a_shared_cache(monkeypatch):
    from fisherx.experiments import distances as experiment

    monkeypatch.setattr(experiment._fxd, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match="under torch.distributed, task_distances needs cache_dir"):
        fisherx.task_distances(preset("digits")[:2], cache_dir=None, **ARGS)


def _rank_pids(rank: int) -> list[int]:
    """PIDs of this user's torchrun workers with RANK=rank (read from /proc, Linux only)."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"run.py" in cmd and b"torch.distributed.run" not in cmd:
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not __import__("os").path.isdir("/proc"), reason="finds the rank's process through /proc")
def test_a_killed_rank_fails_the_job_and_a_rerun_completes_from_the_cache(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from distributed_util import free_port

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    args = dict(ARGS, epochs=4)
    cache = tmp_path / "cache"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "FISHERX_DIST_TIMEOUT": "20"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
        str(cache),
        repr(args),
        str(tmp_path),
    ]
    start = time.monotonic()
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Kill rank 1 like the OOM killer would, once the first network is in the cache.
        while not list(cache.glob("network/*/*.fxc")):
            assert job.poll() is None, job.communicate()[1][-3000:]
            assert time.monotonic() - start < 120, "no network was cached in 2 minutes"
            time.sleep(0.05)
        pids = _rank_pids(1)
        assert pids, "rank 1's process was not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0, "the job must fail when a rank dies"
    assert not (tmp_path / "rank0.json").exists()  # rank 0 did not pretend to finish
    finished = len(list(cache.glob("network/*/*.fxc")))
    assert finished >= 1
    # The re-run (one process here) reuses every finished unit and completes the matrix.
    again = fisherx.task_distances(preset("digits")[:3], cache_dir=cache, **args)
    assert again.stats.get("network.hit", 0) == finished
    assert again.stats.get("network.hit", 0) + again.stats.get("network.miss", 0) == 6
    assert np.all(np.isfinite(again.distances["mlp"]))
