"""Shared test setup: the quick profile everywhere (the nbval kernels inherit the environment)."""

import os

os.environ.setdefault("ROBUST_NB_PROFILE", "quick")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist():
    """The embedded 5k MNIST subset (loaded once per test session)."""
    from robust_nb.data import load_dataset

    return load_dataset("mnist-5k")
