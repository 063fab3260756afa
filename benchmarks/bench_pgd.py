"""PGD-10 (L-inf) of robust_nb against torchattacks.PGD and the textbook loop, one run.

    python benchmarks/bench_pgd.py [--profile quick|full] [--n 256] [--repeats 5]

The PGD part of ``python -m robust_nb bench`` alone (robust_nb/bench.py, ``pgd_section``): every
implementation with ``random_start=False`` (so they compute the same thing; the results are
checked against the textbook loop) on the profile's main model (untrained weights: speed does
not depend on them), plus robust_nb's bf16-autocast mode where bf16 is native. The paths
alternate, ``--repeats`` rounds after a warm-up; medians of wall and process-CPU time. How to
read the output, and the ratios measured so far: benchmarks/README.md.
"""

from __future__ import annotations

import argparse

import robust_nb as rnb
from robust_nb.bench import pgd_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--n", type=int, default=256, help="images per attack call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cfg = rnb.setup(args.profile)
    data = rnb.data.load_dataset(cfg.dataset)
    model = rnb.models.for_config(cfg, data).to(cfg.device).eval()
    x, y = (t[:args.n].to(cfg.device) for t in data.test)
    out = pgd_section(model, x, y, cfg.eps_linf, cfg.alpha_linf, args.repeats)
    base = out["paths"]["torchattacks fp32"] if "torchattacks fp32" in out["paths"] else None
    print(f"PGD-{out['steps']} on {out['n']} images, model={cfg.model}, device={cfg.device}, "
          f"all agree with the textbook loop: {out['agree']}")
    for name, t in out["paths"].items():
        ratio = (f"   torchattacks / this: wall {base['wall_s']['median'] / t['wall_s']['median']:.2f}x,"
                 f" CPU {base['cpu_s']['median'] / t['cpu_s']['median']:.2f}x" if base else "")
        print(f"  {name:<18} wall {t['wall_s']['median'] * 1e3:8.1f} ms   process CPU "
              f"{t['cpu_s']['median'] * 1e3:8.1f} ms (medians of {args.repeats}){ratio}")
    for note in out["notes"]:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
