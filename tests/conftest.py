"""Shared test setup: the quick profile and text progress bars everywhere (the nbval kernels inherit
the environment), the embedded MNIST subset and a small trained convnet shared by the attack and
evaluation tests."""

import os

os.environ.setdefault("ROBUST_NB_PROFILE", "quick")
os.environ.setdefault("ROBUST_NB_TEXT_PROGRESS", "1")   # nbval kernels: no widget front-end

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The browser tests (marker ``e2e``) run last, after nbval has run notebooks/ and cached the
    models that the notebooks they open load (alone, they train what is missing first)."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)     # stable: order kept


@pytest.fixture(scope="session")
def mnist():
    """The embedded 5k MNIST subset (loaded once per test session)."""
    from robust_nb.data import load_dataset

    return load_dataset("mnist-5k")


class TrainingInterrupted(Exception):
    """Raised by an :func:`interrupt_at` callback: stands in for a training run that was killed."""


@pytest.fixture(scope="session")
def interrupt_at():
    """Factory: ``interrupt_at(k)`` is an epoch callback that raises :class:`TrainingInterrupted`
    (also ``interrupt_at.error``) at the end of epoch ``k`` (never for ``k = -1``)."""
    def factory(epoch_to_stop: int):
        def callback(epoch):
            if epoch == epoch_to_stop:
                raise TrainingInterrupted(f"stopped after epoch {epoch}")
        return callback
    factory.error = TrainingInterrupted
    return factory


def small_convnet(mean: float = 0.1307, std: float = 0.3081) -> nn.Sequential:
    """A small MNIST convnet with BatchNorm (so a forgotten train/eval switch would change its
    running statistics); ``model[2]`` is the BatchNorm, ``model[-1]`` the last Linear."""
    class Normalize(nn.Module):
        def forward(self, x):
            return (x - mean) / std

    return nn.Sequential(Normalize(), nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                         nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="session")
def make_convnet():
    """The factory :func:`small_convnet` (untrained weights from the global seed)."""
    return small_convnet


@pytest.fixture(scope="session")
def trained_convnet(mnist):
    """(model in eval mode, 256 test images, their labels): :func:`small_convnet` trained for one
    epoch on the embedded MNIST subset (a few seconds). Tests that switch its mode or set a
    ``.grad`` must restore them."""
    torch.manual_seed(0)
    model = small_convnet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = mnist.train
    gen = torch.Generator().manual_seed(0)
    for idx in torch.randperm(len(x), generator=gen).split(64):
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    xt, yt = mnist.test                # a fixed random subset of 256
    idx = torch.randperm(len(yt), generator=torch.Generator().manual_seed(1))[:256]
    return model, xt[idx], yt[idx]
