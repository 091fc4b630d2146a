"""DDP through torchrun: two CPU processes (gloo) take the same steps as one with the same global batch."""
import os
import subprocess
import sys

import pytest
import torch

from nin.checkpoint import load_checkpoint

# no BatchNorm (per-process batch statistics) and no dropout (per-process masks): the rest is exact math.
# No data-dependent init either: it is the same on both ranks, but its large first steps amplify the
# different order of the gradient sums past this test's tolerance within 16 steps. fp32 on every machine
# (`--amp auto` is bf16 on CPUs with AMX or AVX512-BF16, whose rounding the tolerance is not made for).
SETTINGS = ["--recipe", "fashion-mnist", "--model", "nin_mnist", "--dropout", "0", "--no-data-init", "--amp", "off",
            "--train-subset", "512",
            "--test-subset", "200", "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--no-progress",
            "--no-tensorboard"]


def run_nin(argv, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                "--master-port", "29517"] if processes > 1 else [sys.executable]
    return subprocess.run([*launcher, "-m", "nin", *argv], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, fashion_mnist_root):
    """The run both tests compare with: one process, the whole global batch."""
    out = tmp_path_factory.mktemp("one-process") / "one"
    alone = run_nin(["train", *SETTINGS, "--out", str(out)])
    assert alone.returncode == 0, alone.stderr
    return out


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, one_process):
    together = run_nin(["train", *SETTINGS, "--out", str(tmp_path / "two")], processes=2)
    assert together.returncode == 0, together.stderr

    one, two = load_checkpoint(one_process), load_checkpoint(tmp_path / "two")
    assert one["step"] == two["step"] == 16  # 512 images / 64 per global batch * 2 epochs
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # rank 0 alone wrote the run folder: one metrics row per epoch, with the all-reduced test accuracy
    rows = (tmp_path / "two" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    assert together.stdout.count("run folder:") == 1


def test_two_nodes_training_from_one_pack_match_one_process(tmp_path, fashion_mnist_root, one_process):
    """torchrun's multi-node form (two "nodes" on this machine, one process each, meeting at node
    0's store) trains from one pack, as on a cluster with a shared file system, and takes the steps of
    one process with the same global batch trained from memory."""
    from nin.data.pack import write_pack

    pack = write_pack("fashion-mnist", fashion_mnist_root, tmp_path / "fashion.pack", log=lambda _: None)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    # static ranks: node 0 hosts the store (with c10d's rendezvous either node can host it; CI once saw
    # the other node fail at its exit with "Failed to recv, got 0 bytes", the store's host gone)
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", "29533",
                               "-m", "nin", "train", *SETTINGS, "--root", str(pack), "--out", str(tmp_path / "nodes")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rank in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err

    one, two = load_checkpoint(one_process), load_checkpoint(tmp_path / "nodes")
    assert one["step"] == two["step"] == 16
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
