"""Shared fixtures: a private data cache, and the real Fashion-MNIST that `make test` installs."""
import os

import pytest
import torch

from nin.data import datasets


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's ~/.cache/nin; one cache is shared within the session."""
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nin-cache"))


@pytest.fixture(scope="session")
def fashion_mnist_root():
    """Where Fashion-MNIST lies. `make test` installs it (Debian's dataset-fashion-mnist)."""
    try:
        datasets.load_dataset("fashion-mnist", None, "test", cache=False)
    except datasets.NinError as error:
        pytest.fail(f"the tests need Fashion-MNIST; run `make test`, which installs it ({error})")
    return None  # the default location


@pytest.fixture(autouse=True)
def deterministic_threads():
    torch.manual_seed(0)


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core) each worker's torch gets its share of the
    cores: two workers with a thread per core each would fight over the same cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
