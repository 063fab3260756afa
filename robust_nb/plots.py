"""Matplotlib figures used by the notebooks. Every function returns the Figure it drew."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor


def _to_numpy_image(img: Tensor) -> np.ndarray:
    """(C, H, W) tensor in [0, 1] -> (H, W) or (H, W, C) array for imshow."""
    img = img.detach().float().cpu().clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def image_grid(images: Tensor, titles=None, ncols: int = 10, scale: float = 1.2, cmap="gray"):
    """Draw a batch of images (N, C, H, W) in a grid, with optional per-image titles."""
    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + 0.3 * (titles is not None)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_to_numpy_image(images[i]), cmap=cmap, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return fig
