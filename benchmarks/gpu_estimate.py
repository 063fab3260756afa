"""An ESTIMATE of the GPU hours each full-profile recipe and notebook needs, from FLOP counts.

Nothing here is measured on a GPU. For every full-profile recipe we count the FLOPs of one forward
pass of its model on a CIFAR-10 image (``rnb.models.count_flops``, PyTorch's counter), multiply by
the passes training makes (a training step costs about 3 forward passes -- forward, backward to
inputs and to weights; an attack step about 2 -- forward and backward to the input only), by the
images and epochs of the recipe, add the per-epoch evaluation, and divide by a sustained
throughput. By default that throughput is *anchored to a published measurement*: Wong, Rice &
Kolter's README reports FGSM-RS (15 epochs, PreAct-ResNet-18, fp16) trained in 12 minutes, so our
count of that recipe's FLOPs over 12 minutes is the rate their GPU sustained; ``--tflops`` replaces
it (a current data-centre GPU sustains several times more). The result is an order of magnitude,
to plan with.

    python benchmarks/gpu_estimate.py [--tflops T]
"""

from __future__ import annotations

import argparse

import robust_nb as rnb

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
# Which recipes a notebook trains first (later notebooks load them from the cache), and extra runs.
NOTEBOOKS = {
    "02_dropout_dropblock": [("classical", 3)],            # none, dropout, dropblock
    "03_classical_training": [("classical", 2), ("classical@resnet18", 1)],
    "05_adversarial_training": [("pgd", 1), ("fgsm", 1)],
    "06_trades": [("trades", 1), ("trades-sweep", 5)],
    "07_fire_and_apgd_training": [("fire", 1), ("autoattack", 1)],
    "08_mixup_calibration": [("mixup", 1)],
}


def attack_passes(options) -> int:
    """Forward-equivalent passes per image and step spent crafting the training input."""
    steps = getattr(options, "steps", 0)
    if type(options).__name__ == "FastOptions":
        steps = 1
    if type(options).__name__ in ("TradesOptions", "FireOptions"):
        return 2 * steps + 1 + 1          # ascent steps, clean target, and a second training forward
    return 2 * steps


def recipe_tflop(cfg, method: str, model: str | None = None, epochs: int | None = None) -> float:
    r = rnb.training.recipe(cfg, method)
    name = model or r.model or cfg.model
    net = rnb.models.build_model(name, num_classes=10, in_channels=3)
    fwd = rnb.models.count_flops(net, (3, 32, 32))
    o = r.options
    epochs = epochs or o.epochs
    n_train = TRAIN_IMAGES - r.holdout
    per_epoch = n_train * fwd * (3 + attack_passes(o))
    per_epoch += TEST_IMAGES * fwd                                       # clean validation
    per_epoch += getattr(o, "robust_val", 0) * fwd * (2 * getattr(o, "robust_val_steps", 0) + 1)
    return epochs * per_epoch / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=None,
                        help="sustained throughput, TFLOP/s (default: Wong et al.'s 12-minute run)")
    args = parser.parse_args()
    cfg = rnb.setup("full", verbose=False)
    runs = {m: recipe_tflop(cfg, m) for m in rnb.training.METHODS}
    anchored = args.tflops is None
    if anchored:
        args.tflops = runs["fgsm"] / (12 * 60)
    runs["classical@resnet18"] = recipe_tflop(cfg, "classical", model="resnet18")
    runs["trades-sweep"] = recipe_tflop(cfg, "trades", epochs=cfg.trades_sweep_epochs)
    hours = {k: v / args.tflops / 3600 for k, v in runs.items()}
    how = ("the rate of Wong et al.'s published 12-minute FGSM-RS run" if anchored
           else "an assumed rate")
    print(f"ESTIMATE at {args.tflops:.1f} TFLOP/s sustained ({how}; not measured here):\n")
    print(f"{'recipe':<22}{'PFLOP':>10}{'GPU hours':>12}")
    for k, v in runs.items():
        print(f"{k:<22}{v / 1000:>10.1f}{hours[k]:>12.1f}")
    print(f"\n{'notebook':<26}{'GPU hours':>10}")
    for nb, jobs in NOTEBOOKS.items():
        print(f"{nb:<26}{sum(hours[k] * n for k, n in jobs):>10.1f}")
    print(f"{'all':<26}{sum(hours[k] * n for jobs in NOTEBOOKS.values() for k, n in jobs):>10.1f}")


if __name__ == "__main__":
    main()
