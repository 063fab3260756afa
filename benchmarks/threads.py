"""How many torch threads suit this CPU? Times quick-profile training steps at 1..N threads.

    python benchmarks/threads.py [--repeats 5]

Prints the median and spread of the time per training step of the quick ConvNet (and of a PGD
step, which is the same work without the optimizer) for each thread count, and the ratio to one
thread. `robust_nb.setup()` uses one thread on machines with two or fewer cores because of this.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import robust_nb as rnb


def time_steps(model, x, y, threads: int, steps: int) -> list[float]:
    torch.set_num_threads(threads)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(3):  # warm-up
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds over the thread counts")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    args = parser.parse_args()
    cfg = rnb.setup("quick")
    data = rnb.data.load_dataset(cfg.dataset)
    model = rnb.models.for_config(cfg, data).train()
    x, y = data.train[0][: cfg.batch_size], data.train[1][: cfg.batch_size]
    counts = list(range(1, (os.cpu_count() or 1) + 1))
    results = {n: [] for n in counts}
    for _ in range(args.repeats):  # interleave so that background load hits every count alike
        for n in counts:
            results[n] += time_steps(model, x, y, n, args.steps)
    base = statistics.median(results[1])
    print(f"quick {cfg.model}, batch {cfg.batch_size}, {os.cpu_count()} CPUs")
    print("threads  median ms/step  p10-p90 ms      speed vs 1 thread")
    for n in counts:
        ts = sorted(results[n])
        p10, p90 = ts[len(ts) // 10], ts[9 * len(ts) // 10]
        med = statistics.median(ts)
        print(f"{n:>7}  {1e3 * med:>13.1f}  {1e3 * p10:>6.1f}-{1e3 * p90:<6.1f}  {base / med:>8.2f}x")


if __name__ == "__main__":
    main()
