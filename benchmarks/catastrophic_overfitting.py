"""Search for catastrophic overfitting of FGSM training on the quick profile (notebook 05 quotes it).

For each setting, trains ``FastAdversarialTraining`` from scratch with the quick FGSM recipe's
optimizer, schedule and data, changing only what the setting names, for ``--epochs`` epochs with
the guard measuring but never firing (``guard_drop=1``), and after every epoch attacks ``--n``
test images with the training step (FGSM) and with PGD-10 (step eps/4): Wong et al.'s signature
is FGSM accuracy rising while PGD accuracy falls to about 0. Prints one table per run and writes
all runs to ``--out`` as JSON.

    python benchmarks/catastrophic_overfitting.py                      # every setting, seed 0
    python benchmarks/catastrophic_overfitting.py plain_w2 --seeds 0 1 2 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import robust_nb as rnb


def settings(eps: float) -> dict[str, dict]:
    return {
        "rs_1.25_w2": dict(random_start=True, alpha=1.25 * eps, eps_warmup_epochs=2),   # the recipe
        "rs_1.25": dict(random_start=True, alpha=1.25 * eps, eps_warmup_epochs=0),
        "rs_2eps_w2": dict(random_start=True, alpha=2 * eps, eps_warmup_epochs=2),
        "rs_2eps": dict(random_start=True, alpha=2 * eps, eps_warmup_epochs=0),
        "plain_w2": dict(random_start=False, alpha=eps, eps_warmup_epochs=2),
        "plain": dict(random_start=False, alpha=eps, eps_warmup_epochs=0),
    }


def run(cfg, data, name: str, change: dict, seed: int, epochs: int, n: int) -> dict:
    x, y = (t.to(cfg.device) for t in rnb.data.attack_subset(data, n, seed=cfg.seed))
    eps = cfg.eps_linf
    options = rnb.training.recipe(cfg, "fgsm").options.replace(
        epochs=epochs, seed=seed, guard=True, guard_drop=1.0, robust_val=0, **change)
    torch.manual_seed(seed)
    model = rnb.models.for_config(cfg, data).to(cfg.device)
    rows: list[dict] = []

    class Probe(rnb.training.FastAdversarialTraining):
        def on_epoch_end(self, epoch, record):
            super().on_epoch_end(epoch, record)
            m = self.eval_model
            rows.append({
                "epoch": epoch + 1, "clean": rnb.evaluation.accuracy(m, x, y),
                "fgsm": rnb.evaluation.robust_accuracy(m, x, y, "fgsm", eps=eps),
                "pgd": rnb.evaluation.robust_accuracy(m, x, y, "pgd", eps=eps, alpha=eps / 4, steps=10),
                "guard_fgsm": record["guard_fgsm_acc"], "guard_pgd": record["guard_pgd_acc"],
                "train_acc": record["acc"]})

    start = time.perf_counter()
    Probe(model, options, quiet=True).fit(data.train)
    return {"setting": name, "change": change, "seed": seed, "n": n, "eps": eps,
            "seconds": time.perf_counter() - start, "epochs": rows}


def main() -> None:
    cfg = rnb.setup("quick")
    table = settings(cfg.eps_linf)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", choices=[[], *table], default=[],
                        help="settings to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n", type=int, default=500, help="test images attacked after each epoch")
    parser.add_argument("--out", type=Path, default=Path("results/catastrophic_overfitting.json"))
    args = parser.parse_args()
    data = rnb.data.load_dataset(cfg.dataset)
    runs = []
    for name in args.names or list(table):
        for seed in args.seeds:
            r = run(cfg, data, name, table[name], seed, args.epochs, args.n)
            runs.append(r)
            print(f"\n{name} seed {seed} ({r['seconds']:.0f} s): {table[name]}")
            print("epoch  clean   FGSM    PGD-10  | guard batch: FGSM  PGD-5")
            for e in r["epochs"]:
                print(f"{e['epoch']:>5}  {e['clean']:.3f}  {e['fgsm']:.3f}  {e['pgd']:.3f}   |"
                      f"              {e['guard_fgsm']:.2f}  {e['guard_pgd']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
