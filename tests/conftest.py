"""Shared fixtures: a private data cache, and the real Fashion-MNIST that `make test` installs."""
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
