"""How many torch threads suit this CPU? Times the quick profile's hot loops at 1..N threads.

    python benchmarks/threads.py [--repeats 5] [--steps 10]

Three workloads on the quick ConvNet, each timed at every thread count in interleaved rounds (so
background load hits every count alike): a plain fp32 training step, the step as the classical
recipe runs it (channels_last, bf16 autocast where the CPU has native bf16), and a PGD-10 batch
(``robust_nb.attacks.pgd``, the inner loop of adversarial training and evaluation). Prints the
median and the p10-p90 spread per step, and the speed relative to one thread.
`robust_nb.setup()` chooses the thread count for small CPUs from these numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import robust_nb as rnb
from robust_nb.training.base import cpu_has_fast_bf16


def train_step(model, x, y, amp: bool):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return step


def timed(fn, threads: int, steps: int) -> list[float]:
    torch.set_num_threads(threads)
    for _ in range(2):  # warm-up
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds over the thread counts")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    args = parser.parse_args()
    cfg = rnb.setup("quick")
    data = rnb.data.load_dataset(cfg.dataset)
    x, y = data.train[0][: cfg.batch_size], data.train[1][: cfg.batch_size]
    plain = rnb.models.for_config(cfg, data).train()
    recipe = rnb.models.for_config(cfg, data).train().to(memory_format=torch.channels_last)
    attacked = rnb.models.for_config(cfg, data).eval()
    xa, ya = data.test[0][:256], data.test[1][:256]
    bf16 = cpu_has_fast_bf16()
    workloads = {
        "train step, fp32": train_step(plain, x, y, amp=False),
        f"train step, recipe (channels_last{', bf16' if bf16 else ''})":
            train_step(recipe, x.contiguous(memory_format=torch.channels_last), y, amp=bf16),
        "PGD-10 on 256 images": lambda: rnb.attacks.pgd(
            attacked, xa, ya, eps=cfg.eps_linf, alpha=cfg.alpha_linf, steps=10),
    }
    counts = list(range(1, (os.cpu_count() or 1) + 1))
    results = {(w, n): [] for w in workloads for n in counts}
    for _ in range(args.repeats):
        for w, fn in workloads.items():
            for n in counts:
                results[w, n] += timed(fn, n, args.steps)
    print(f"quick {cfg.model}, batch {cfg.batch_size}, {os.cpu_count()} CPUs, "
          f"{args.repeats} x {args.steps} timed runs per cell")
    for w in workloads:
        print(f"\n{w}\nthreads  median ms  p10-p90 ms        speed vs 1 thread")
        base = statistics.median(results[w, 1])
        for n in counts:
            ts = sorted(results[w, n])
            p10, p90 = ts[len(ts) // 10], ts[9 * len(ts) // 10]
            med = statistics.median(ts)
            print(f"{n:>7}  {1e3 * med:>9.1f}  {1e3 * p10:>7.1f}-{1e3 * p90:<8.1f}  {base / med:>6.2f}x")


if __name__ == "__main__":
    main()
