"""Ready-made hyperparameter sets for :class:`~robust_nb.training.ClassicalTraining`.

``preset(name, **overrides)`` returns keyword arguments; every value can be overridden:

>>> trainer = ClassicalTraining(model, **preset("cifar_resnet", epochs=30))

``"self_study"``
    The baseline of the self-study course the notebooks follow: SGD with lr 0.03, momentum 0.9,
    batch 64, weight decay 1e-4, random shifts (pad-and-crop) and horizontal flips, an EMA of the
    weights, cosine decay. The EMA decay (0.999 per step) and the epoch count (30) are our
    choices; the course does not fix them.
``"cifar_resnet"``
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
    https://arxiv.org/abs/1512.03385, Sec. 4.2 (CIFAR-10): SGD lr 0.1, momentum 0.9, weight
    decay 1e-4, batch 128, 4-pixel pad-and-crop and flips, lr divided by 10 at 32k and 48k of
    64k iterations, i.e. at 50% and 75% of training (our ``"piecewise"`` schedule), 64k
    iterations = 164 epochs of 50k images. Deviation: the paper trains on a 45k/5k split for
    its validation curves and warms a 110-layer model up at lr 0.01; we train on all 50k images
    and warm up only when asked (``warmup_epochs``).
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "self_study": dict(optimizer="sgd", lr=0.03, momentum=0.9, nesterov=False, batch_size=64,
                       weight_decay=1e-4, augment="crop+flip", ema_decay=0.999,
                       schedule="cosine", epochs=30),
    "cifar_resnet": dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, batch_size=128,
                         weight_decay=1e-4, augment="crop+flip", crop_padding=4,
                         schedule="piecewise", epochs=164),
}


def preset(name: str, **overrides) -> dict:
    """The keyword arguments of preset ``name``, updated with ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**PRESETS[name], **overrides}
