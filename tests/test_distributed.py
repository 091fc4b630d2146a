"""DDP through torchrun: two CPU processes (gloo) take the same steps as one with the same global batch."""
import os
import subprocess
import sys

import torch

from nin.checkpoint import load_checkpoint

# no BatchNorm (per-process batch statistics) and no dropout (per-process masks): the rest is exact math.
# No data-dependent init either: it is the same on both ranks, but its large first steps amplify the
# different order of the gradient sums past this test's tolerance within 16 steps.
SETTINGS = ["--recipe", "fashion-mnist", "--model", "nin_mnist", "--dropout", "0", "--no-data-init",
            "--train-subset", "512",
            "--test-subset", "200", "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--no-progress",
            "--no-tensorboard"]


def run_nin(argv, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                "--master-port", "29517"] if processes > 1 else [sys.executable]
    return subprocess.run([*launcher, "-m", "nin", *argv], capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, fashion_mnist_root):
    alone = run_nin(["train", *SETTINGS, "--out", str(tmp_path / "one")])
    assert alone.returncode == 0, alone.stderr
    together = run_nin(["train", *SETTINGS, "--out", str(tmp_path / "two")], processes=2)
    assert together.returncode == 0, together.stderr

    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert one["step"] == two["step"] == 16  # 512 images / 64 per global batch * 2 epochs
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # rank 0 alone wrote the run folder: one metrics row per epoch, with the all-reduced test accuracy
    rows = (tmp_path / "two" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    assert together.stdout.count("run folder:") == 1
