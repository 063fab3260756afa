"""Every architecture of the course, by name: ``build_model(name, ...)``.

>>> model = build_model("resnet18", num_classes=10, in_channels=3)            # CIFAR ResNet-18
>>> model = build_model("wrn_16_4", regularization="dropblock", drop_prob=0.1)
>>> model = for_config(cfg, data)                                            # what notebooks use

Every model starts with a :class:`Normalize` layer holding the dataset's mean and std, so it
takes images in [0, 1] of shape (N, C, H, W) and returns logits of shape (N, num_classes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from .convnet import ConvNet
from .layers import (
    REGULARIZATIONS,
    DropBlock2d,
    DropBlockSchedule,
    Normalize,
    SqueezeExcitation,
    blocks_from_seeds,
    check_regularization,
    drop_block2d,
    dropblock_drop_rate,
    dropblock_gamma,
    dropblock_mask,
)
from .resnet import ResNet, preact_resnet, resnet, se_resnet, wide_resnet
from .robustbench import ModelUnavailableError, load_robustbench, robustbench_weights_path
from .summary import (
    count_flops,
    count_parameters,
    feature_maps,
    feature_shapes,
    layer_gradient_norms,
    se_gates,
    summarize,
)

__all__ = ["build_model", "available_models", "for_config", "Normalize", "DropBlock2d",
           "DropBlockSchedule", "drop_block2d", "dropblock_gamma", "dropblock_drop_rate",
           "dropblock_mask", "blocks_from_seeds", "SqueezeExcitation", "ConvNet", "ResNet",
           "REGULARIZATIONS", "count_parameters", "count_flops", "feature_maps", "feature_shapes",
           "layer_gradient_norms", "se_gates", "summarize", "load_robustbench",
           "robustbench_weights_path", "ModelUnavailableError"]

_FIXED = ("convnet", "resnet18", "resnet34", "resnet50", "resnet101", "preact_resnet18",
          "preact_resnet34", "se_resnet18", "se_resnet34", "se_resnet50")
_WRN_EXAMPLES = ("wrn_16_4", "wrn_28_10", "wrn_34_10")
_WRN = re.compile(r"^wrn_(\d+)_(\d+)$")
_STEMS = ("cifar", "imagenet")


def available_models() -> list[str]:
    """The model names :func:`build_model` knows (any ``wrn_<6n+4>_<k>`` works, not only these)."""
    return list(_FIXED) + list(_WRN_EXAMPLES)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3,
                regularization: str | None = None, *, width: float = 1.0,
                filters: int | Sequence[int] | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, drop_prob: float | None = None,
                block_size: int | None = None, stem: str = "cifar",
                residual: bool = True, batchnorm: bool | None = None) -> nn.Module:
    """Build the architecture ``name`` (see :func:`available_models`).

    Args:
        name: "convnet", "resnet18|34|50|101", "preact_resnet18|34", "se_resnet18|34|50" or
            "wrn_<depth>_<k>" (e.g. "wrn_28_10", "wrn_34_10", "wrn_16_4").
        num_classes, in_channels: output classes and input channels.
        regularization: None, "dropout" or "dropblock", applied after the last two stages.
        width: channel multiplier of the ResNet family (the quick profile uses small values).
        filters: the ConvNet's base width ``f`` (widths f, 2f, 4f, 8f) or its four widths
            ``(f1, f2, f3, f4)``; default 64, i.e. (64, 128, 256, 512). See :class:`ConvNet`.
        mean, std: per-channel statistics for the :class:`Normalize` first layer (default 0.5).
        drop_prob: Dropout / DropBlock drop probability (default 0.1, i.e. keep_prob 0.9).
        block_size: DropBlock block size (default 3 for small inputs; 7 with the ImageNet stem,
            the paper's value for ResNet-50 on ImageNet).
        stem: "cifar" (3x3 conv, for 28-32 pixel images) or "imagenet" (7x7/2 conv + max-pool).
        residual: False removes every shortcut of a ResNet-family model (a "plain" network).
        batchnorm: BatchNorm after every hidden conv of the ConvNet (default False, as in the
            self-study course; the ResNet family always has BatchNorm).
    """
    check_regularization(regularization)
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {type(name).__name__}")
    if stem not in _STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {_STEMS}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, "
                         f"{in_channels}")
    drop_prob = 0.1 if drop_prob is None else float(drop_prob)
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}")
    block_size = (7 if stem == "imagenet" else 3) if block_size is None else int(block_size)
    common = dict(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
                  regularization=regularization, drop_prob=drop_prob, block_size=block_size)
    key = name.lower()
    if key == "convnet":
        if stem != "cifar" or not residual:
            raise ValueError("the convnet has no stem option and no residual connections")
        return ConvNet(filters=filters if filters is not None else 64,
                       batchnorm=bool(batchnorm), **common)
    if filters is not None:
        raise ValueError(f"filters applies to the convnet only; use width for {name!r}")
    if batchnorm is not None:
        raise ValueError(f"batchnorm applies to the convnet only; {name!r} always has BatchNorm")
    family = dict(width=width, stem=stem, residual=residual, **common)
    if (m := re.fullmatch(r"(resnet|preact_resnet|se_resnet)(\d+)", key)) and key in _FIXED:
        builder = {"resnet": resnet, "preact_resnet": preact_resnet, "se_resnet": se_resnet}[m[1]]
        return builder(int(m[2]), **family)
    if m := _WRN.match(key):
        return wide_resnet(int(m[1]), int(m[2]), **family)
    raise ValueError(f"unknown model {name!r}; choose one of {available_models()} "
                     f"(or any wrn_<depth>_<k> with depth = 6n+4)")


def for_config(cfg, data, name: str | None = None, regularization: str | None = None,
               **overrides) -> nn.Module:
    """Build ``name or cfg.model`` for ``data`` (classes, channels, mean/std) at the profile's size.

    The ConvNet gets ``filters=cfg.convnet_filters`` and ``batchnorm=cfg.convnet_batchnorm``
    (False for a Config without that field), the ResNet family ``width=cfg.width``;
    Dropout / DropBlock use ``cfg.drop_prob`` and ``cfg.block_size``. ``overrides`` go to
    :func:`build_model` (e.g. ``drop_prob=0.2``). The model is moved to ``cfg.device``.
    """
    name = name or cfg.model
    kw = dict(num_classes=data.num_classes, in_channels=data.in_channels,
              regularization=regularization, mean=data.mean, std=data.std,
              drop_prob=cfg.drop_prob, block_size=cfg.block_size)
    if name.lower() == "convnet":
        kw["filters"] = cfg.convnet_filters
        kw["batchnorm"] = cfg.convnet_batchnorm
    else:
        kw["width"] = cfg.width
    kw.update(overrides)
    return build_model(name, **kw).to(cfg.device)
