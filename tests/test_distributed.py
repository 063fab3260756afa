"""torch.distributed: 2 processes (gloo, CPU, 127.0.0.1) started by torchrun on the real command line.

Equality: 2 processes x a batch of B each must train the same weights as 1 process with batch 2B
(``--batch-size`` is the global batch), up to float rounding. The model is a ConvNet *without*
BatchNorm: each rank normalises with its own half-batch's statistics, so with BatchNorm the two
runs legitimately differ (SyncBatchNorm, which would share them, has no CPU kernel in PyTorch).
The data are a tiny image folder written by the test (a few steps per epoch). The single-process
runs go through ``robust_nb.train.main`` in this process; the two-process ones through
``python -m torch.distributed.run`` in their own process group, killed whatever happens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from imagefolders import write_image_folder

from robust_nb import train as cli

# A crop+flip classical run and a PGD run (no random start: PGD is then deterministic, so the
# 1-process run attacks exactly what the 2 ranks attack). amp off: bf16 rounding (on CPUs with
# native bf16) would dwarf the differences of summation order that the tolerance allows.
COMMON = ["--recipe", "quick", "--model", "convnet", "--filters", "4", "--no-batchnorm",
          "--image-size", "12", "--epochs", "2", "--batch-size", "16", "--lr", "0.05",
          "--amp", "false", "--eval-n", "8", "--eval-steps", "2", "--quiet"]
CLASSICAL = ["--method", "classical", "--augment", "crop+flip", "--crop-padding", "2"]
PGD = ["--method", "pgd", "--no-random-start", "--steps", "2", "--eps", "0.1", "--alpha", "0.05",
       "--robust-val", "8", "--eps-warmup-epochs", "0", "--augment", "none"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, timeout: float = 300) -> str:
    """``torchrun --nproc_per_node=nproc -m robust_nb.train ARGS`` on 127.0.0.1; its output.
    The launcher and its workers share a new process group, killed on any exit path."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "-m", "robust_nb.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, f"torchrun exited with {proc.returncode}:\n{out[-4000:]}"
    return out


def weights(out_dir) -> dict:
    return torch.load(out_dir / "model.pt", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict, atol=2e-5, rtol=1e-4):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def classical_runs(folder, tmp_path_factory):
    """(one-process run, uninterrupted two-process run) of the classical setting."""
    tmp = tmp_path_factory.mktemp("classical")
    data = ["--dataset", f"imagefolder:{folder}"]
    assert cli.main([*COMMON, *CLASSICAL, *data, "--out", str(tmp / "one")]) == 0
    torchrun([*COMMON, *CLASSICAL, *data, "--out", str(tmp / "two")])
    return tmp / "one", tmp / "two"


def test_two_processes_train_like_one_with_the_global_batch(classical_runs):
    one, two = classical_runs
    assert_same_weights(weights(one), weights(two))
    import json

    h1, h2 = (json.loads((d / "history.json").read_text())["records"] for d in (one, two))
    for r1, r2 in zip(h1, h2, strict=True):                  # summed over ranks: the same numbers
        assert r1["acc"] == pytest.approx(r2["acc"], abs=1e-9)
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-4)
        assert r1["val_acc"] == pytest.approx(r2["val_acc"], abs=1e-9)
    e1, e2 = (json.loads((d / "evaluation.json").read_text()) for d in (one, two))
    assert e1["clean"] == e2["clean"]                         # all test images, counts summed
    assert e2["pgd"]["n"] == 8


def test_pgd_training_two_processes_equal_one(folder, tmp_path):
    data = ["--dataset", f"imagefolder:{folder}"]
    assert cli.main([*COMMON, *PGD, *data, "--out", str(tmp_path / "one")]) == 0
    torchrun([*COMMON, *PGD, *data, "--out", str(tmp_path / "two")])
    assert_same_weights(weights(tmp_path / "one"), weights(tmp_path / "two"))


def test_resume_after_a_stop_gives_the_uninterrupted_weights(folder, classical_runs, tmp_path):
    args = [*COMMON, *CLASSICAL, "--dataset", f"imagefolder:{folder}", "--out", str(tmp_path)]
    out = torchrun([*args, "--stop-after", "1"])
    assert "continue with --resume" in out
    assert not (tmp_path / "model.pt").exists()
    torchrun([*args, "--resume"])
    # the same processes and order of operations: identical, not merely close
    assert_same_weights(weights(tmp_path), weights(classical_runs[1]), atol=0, rtol=0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("augment", ["crop+flip", "resized-crop+flip"])
def test_the_ranks_batches_together_are_the_one_process_batch(seed, augment):
    """No processes needed: each rank's loader, built alone, yields its slice of the batch that
    one process draws from the same seed (order, crops, flips); a partial last batch is cut to a
    multiple of the number of ranks."""
    from robust_nb.data import DeviceLoader

    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(70, 3, 8, 8, generator=g), torch.arange(70)
    kw = dict(batch_size=16, augment=augment, seed=seed, padding=2)
    one = list(DeviceLoader(x, y, **kw))
    ranks = [list(DeviceLoader(x, y, rank=r, world_size=4, **kw)) for r in range(4)]
    assert len(one) == 5 and all(len(batches) == 5 for batches in ranks)
    for step, (xb, yb) in enumerate(one[:4]):                       # full batches: 4 x 4 images
        torch.testing.assert_close(torch.cat([ranks[r][step][0] for r in range(4)]), xb)
        assert torch.equal(torch.cat([ranks[r][step][1] for r in range(4)]), yb)
    tail = [ranks[r][4][1] for r in range(4)]                       # 70 = 4 x 16 + 6 -> 4 x 1
    assert [len(t) for t in tail] == [1, 1, 1, 1] and torch.equal(torch.cat(tail), one[4][1][:4])
    assert DeviceLoader(x, y, rank=0, world_size=4, **kw).samples_per_epoch == 68
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        DeviceLoader(x, y, batch_size=10, world_size=4)
