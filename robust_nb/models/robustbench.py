"""Published robust models from the RobustBench model zoo, to attack with our AutoAttack.

RobustBench (Croce et al., "RobustBench: a standardized adversarial robustness benchmark",
NeurIPS 2021 Datasets and Benchmarks, https://arxiv.org/abs/2010.09670; code and leaderboard:
https://github.com/RobustBench/robustbench) collects the released weights of published defenses
and their AutoAttack accuracy. :func:`load_robustbench` loads one through the ``robustbench``
package (an optional dependency: ``pip install "robust-nb[robustbench]"``) so that
``rnb.attacks.autoattack`` can be run on it and compared with the leaderboard.

Like every model of the course, a RobustBench model takes images in [0, 1] of shape
(N, C, H, W): the zoo's models normalise inside. The weights are downloaded once, on first use,
into ``root/<dataset>/<threat_model>/<name>.pt``; offline, the file must already be there.

>>> model = load_robustbench("Zhang2019Theoretically")                 # doctest: +SKIP
>>> x_adv = rnb.attacks.autoattack(model, x, y, eps=8 / 255)          # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from torch import nn

__all__ = ["load_robustbench", "robustbench_weights_path", "ModelUnavailableError",
           "INSTALL_HINT"]

INSTALL_HINT = ('pip install "robust-nb[robustbench]"  (or: pip install robustbench; '
                "the latest from https://github.com/RobustBench/robustbench)")


class ModelUnavailableError(RuntimeError):
    """The weights of a RobustBench model are not on disk and could not be downloaded."""


def _default_root() -> Path:
    from ..data import default_root

    return default_root() / "robustbench"


def _import_robustbench():
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.utils import load_model
    except ImportError as err:
        raise ImportError(f"load_robustbench needs the optional package 'robustbench', which "
                          f"could not be imported ({err}). Install it with: {INSTALL_HINT}"
                          ) from err
    return load_model, model_dicts, BenchmarkDataset, ThreatModel


def _enum(enum_cls, value: str, what: str):
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(repr(e.value) for e in enum_cls)
        raise ValueError(f"unknown RobustBench {what} {value!r}; choose one of {choices}"
                         ) from None


def robustbench_weights_path(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                             root: str | os.PathLike | None = None) -> Path:
    """Where :func:`load_robustbench` keeps (or expects) the weights of ``name``:
    ``root/<dataset>/<threat_model>/<name>.pt`` (an ensemble keeps ``<name>.pt_m0.pt``, ...).
    ``root`` defaults to ``$ROBUST_NB_DATA/robustbench`` (``~/.cache/robust_nb/robustbench``)."""
    root = Path(root) if root is not None else _default_root()
    return root / dataset / threat_model / f"{name}.pt"


def load_robustbench(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                     root: str | os.PathLike | None = None, *, download: bool = True
                     ) -> nn.Module:
    """Load the RobustBench model ``name`` (e.g. "Zhang2019Theoretically", "Wong2020Fast"),
    in eval mode, on the CPU; it takes images in [0, 1] and returns logits.

    Source: RobustBench, https://github.com/RobustBench/robustbench (``robustbench.utils.
    load_model``); the model IDs and their AutoAttack accuracies are on its leaderboard,
    https://robustbench.github.io.

    Args:
        name: the model's RobustBench ID.
        dataset: "cifar10", "cifar100" or "imagenet".
        threat_model: "Linf", "L2" or "corruptions".
        root: folder of the weights (default ``$ROBUST_NB_DATA/robustbench``); the file is
            ``root/<dataset>/<threat_model>/<name>.pt`` (:func:`robustbench_weights_path`).
        download: fetch missing weights (the only network access); False fails instead.

    Raises:
        ImportError: ``robustbench`` is not installed (the message says how to install it).
        ValueError: an unknown model, dataset or threat model (with the closest names).
        FileNotFoundError: the weights are missing and ``download`` is False.
        ModelUnavailableError: the download failed (offline?); the message names the file to
            provide.

    >>> model = load_robustbench("Wong2020Fast", root="weights").to(cfg.device)   # doctest: +SKIP
    """
    load_model, model_dicts, BenchmarkDataset, ThreatModel = _import_robustbench()
    dataset_ = _enum(BenchmarkDataset, dataset, "dataset")
    threat_ = _enum(ThreatModel, threat_model, "threat model")
    known = model_dicts[dataset_][threat_]
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"RobustBench has no {dataset}/{threat_model} model {name!r}{hint} "
                         f"(the IDs are listed at https://robustbench.github.io)")
    path = robustbench_weights_path(name, dataset_.value, threat_.value, root)
    ensemble = isinstance(known[name].get("gdrive_id"), (list, tuple))
    present = (path.with_name(f"{path.name}_m0.pt") if ensemble else path).is_file()
    if not present and not download:
        raise FileNotFoundError(f"the weights of RobustBench model {name!r} are not at {path}; "
                                f"call with download=True on a machine with a network, or copy "
                                f"the file there (from the model's entry in robustbench."
                                f"model_zoo, https://github.com/RobustBench/robustbench)")
    try:
        model = load_model(model_name=name, model_dir=str(path.parents[2]),
                           dataset=dataset_.value, threat_model=threat_.value)
    except OSError as err:  # requests' ConnectionError, socket and URL errors are all OSErrors
        if present:
            raise
        raise ModelUnavailableError(
            f"could not download the weights of RobustBench model {name!r} ({err}). Offline? "
            f"Download them where there is a network (python -c \"import robust_nb; robust_nb."
            f"models.load_robustbench({name!r}, {dataset_.value!r}, {threat_.value!r})\") and "
            f"copy the file to {path}") from err
    return model.eval()
