"""A tiny ImageNet-style folder for the tests (imported by test_imagefolder, test_distributed and
test_train_cli): two classes of noisy images, one reddish and one bluish, so that a few training
steps learn something."""

from __future__ import annotations

import numpy as np
from PIL import Image

CLASSES = ("blue", "red")


def write_image_folder(root, n_train=24, n_val=8, size=12, seed=0, sizes=None, suffix=".png"):
    """``root/train/<class>/<i>.png`` and ``root/val/<class>/<i>.png``; ``sizes``: a list of
    (height, width) cycled over the images (default: all ``size`` x ``size``)."""
    rng = np.random.default_rng(seed)
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = sizes[k % len(sizes)] if sizes else (size, size)
                k += 1
                img = rng.integers(0, 160, (h, w, 3), dtype=np.uint8)
                img[..., 2 if label == 0 else 0] += 90
                Image.fromarray(img).save(folder / f"{i}{suffix}")
    return root
