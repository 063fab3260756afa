"""PGD-10 (L-inf) of robust_nb against torchattacks.PGD on the same model, same inputs, one run.

    python benchmarks/bench_pgd.py [--profile quick|full] [--n 256] [--repeats 5] [--amp]

Both attacks run with ``random_start=False`` (so they compute the same thing -- the test suite
checks that pixel for pixel) on the course's main model for the profile (untrained weights: speed
does not depend on them). Timings alternate between the two implementations and the median of
``--repeats`` runs is reported, with a device synchronisation around each run. ``--amp`` also
times our bf16-autocast mode. How to read the output, and the ratios measured so far:
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import robust_nb as rnb


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared CPU the process time is the
    steadier measure (other jobs inflate wall time, not our CPU time); on a GPU use wall time."""
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--n", type=int, default=256, help="images per attack call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--amp", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args()

    import torchattacks

    cfg = rnb.setup(args.profile)
    data = rnb.data.load_dataset(cfg.dataset)
    model = rnb.models.for_config(cfg, data).to(cfg.device).eval()
    x, y = (t[:args.n].to(cfg.device) for t in data.test)
    eps, alpha, steps = cfg.eps_linf, cfg.alpha_linf, 10

    ours = lambda: rnb.attacks.pgd(model, x, y, eps, alpha, steps, random_start=False)       # noqa: E731
    ours_amp = lambda: rnb.attacks.pgd(model, x, y, eps, alpha, steps, random_start=False, amp=True)  # noqa: E731
    theirs_attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    theirs = lambda: theirs_attack(x, y)                                                       # noqa: E731

    same = torch.equal(ours(), theirs())            # also a warm-up of both
    times = {"robust_nb": [], "torchattacks": []} | ({"robust_nb amp": []} if args.amp else {})
    for _ in range(args.repeats):
        times["robust_nb"].append(timed(ours, cfg.device))
        times["torchattacks"].append(timed(theirs, cfg.device))
        if args.amp:
            times["robust_nb amp"].append(timed(ours_amp, cfg.device))
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    print(f"PGD-{steps} on {args.n} images, model={cfg.model}, device={cfg.device}, "
          f"threads={torch.get_num_threads()}, identical outputs: {same}")
    for k in wall:
        print(f"  {k:<14} wall {wall[k] * 1e3:8.1f} ms   process CPU {cpu[k] * 1e3:8.1f} ms "
              f"(medians of {args.repeats})")
    for k in [k for k in wall if k != "torchattacks"]:
        print(f"  speed ratio torchattacks / {k}: wall {wall['torchattacks'] / wall[k]:.2f}x, "
              f"CPU {cpu['torchattacks'] / cpu[k]:.2f}x")


if __name__ == "__main__":
    main()
