"""robust_nb: the package behind the robust-nb course notebooks.

>>> import robust_nb as rnb
>>> cfg = rnb.setup()                      # profile, device, seeds, threads
>>> data = rnb.data.load_dataset(cfg.dataset)

Submodules are imported on first use, so ``import robust_nb`` stays fast.
"""

from __future__ import annotations

import importlib

from .config import Config, setup

__version__ = "0.1.0"

_SUBMODULES = ("attacks", "augmix", "calibration", "config", "corruptions", "data", "defenses",
               "evaluation", "exercises", "losses", "models", "plots", "progress", "report", "spatial",
               "stats", "training", "widgets")

__all__ = ["Config", "setup", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'robust_nb' has no attribute {name!r}")
