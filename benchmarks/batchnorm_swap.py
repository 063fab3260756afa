"""What ``rnb.attacks.batchnorm_as_affine`` buys: attacks with eval-mode BatchNorm as it is, as an
affine map, and folded into the conv before it, in one run.

    python benchmarks/batchnorm_swap.py [--profile quick|full] [--n 256] [--repeats 7]

Every attack runs its model in eval mode, where a BatchNorm2d is a fixed per-channel affine map.
``batchnorm_as_affine`` (used by every gradient attack, Square and TRADES' and FIRE's inner
maximisation) folds it into the Conv2d right before it where the two are neighbours in an
``nn.Sequential``, and replaces any other BatchNorm2d by ``x * scale + shift``. The swap only
takes modules of exactly these types, so three copies of the profile's main model (untrained
weights: speed does not depend on them) give the three variants:

* ``folded``: the model itself (what the attacks run);
* ``affine``: its convs re-typed as a Conv2d subclass, so nothing folds;
* ``batchnorm``: its BatchNorms re-typed as a subclass, so nothing is swapped.

Timed: PGD-10 (``random_start=False``) and the TRADES KL ascent (5 steps) on ``--n`` test images,
the variants interleaved, ``--repeats`` rounds after a warm-up; medians of wall time, and the
speed of each variant relative to ``batchnorm``. The adversarial images of the variants agree up
to float rounding (a few pixels may take the other sign of a near-zero gradient); the script
prints the largest logit difference between the variants. Read it next to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import robust_nb as rnb


class _Conv(nn.Conv2d):
    """A Conv2d that ``batchnorm_as_affine`` does not fold into."""


class _BatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d that ``batchnorm_as_affine`` leaves as it is."""


def _retyped(model: nn.Module, old: type, new: type) -> nn.Module:
    out = copy.deepcopy(model)
    for m in out.modules():
        if type(m) is old:
            m.__class__ = new
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--n", type=int, default=256, help="images per attack call")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    cfg = rnb.setup(args.profile)
    data = rnb.data.load_dataset(cfg.dataset)
    model = rnb.models.for_config(cfg, data).to(cfg.device).eval()
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise SystemExit(f"the {cfg.profile} profile's {cfg.model} has no BatchNorm: nothing to compare")
    model = model.to(memory_format=torch.channels_last)
    x, y = (t[:args.n].to(cfg.device) for t in data.test)
    variants = {"batchnorm": _retyped(model, nn.BatchNorm2d, _BatchNorm),
                "affine": _retyped(model, nn.Conv2d, _Conv), "folded": model}
    eps, alpha = cfg.eps_linf, cfg.alpha_linf
    attacks = {
        "PGD-10": lambda m: rnb.attacks.pgd(m, x, y, eps, alpha, 10, random_start=False),
        "TRADES KL, 5 steps": lambda m: rnb.attacks.trades_kl(m, x, eps=eps, alpha=alpha, steps=5,
                                                              seed=0),
    }
    with torch.no_grad():
        ref = model(x)
        diff = 0.0
        for m in variants.values():
            with rnb.attacks.batchnorm_as_affine(m):                 # what the attacks see
                diff = max(diff, (m(x) - ref).abs().max().item())
    print(f"{cfg.model} on {len(x)} images, device={cfg.device}, threads={torch.get_num_threads()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; largest logit difference "
          f"between the variants as the attacks run them (eval mode, fp32): {diff:.1e}")
    for name, attack in attacks.items():
        times = {v: [] for v in variants}
        for m in variants.values():                                  # warm-up
            attack(m)
        for _ in range(args.repeats):
            for v, m in variants.items():
                if cfg.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                attack(m)
                if cfg.device.type == "cuda":
                    torch.cuda.synchronize()
                times[v].append(time.perf_counter() - start)
        med = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
        print(f"{name}:")
        for v in variants:
            print(f"  {v:<10} {med[v] * 1e3:8.1f} ms (median of {args.repeats})   "
                  f"speed vs batchnorm {med['batchnorm'] / med[v]:.2f}x")


if __name__ == "__main__":
    main()
