"""``python -m robust_nb bench``: robust_nb beside the tools people use, in one run, on one model.

Three measurements on the profile's main model and data, on the profile's device:

* **PGD-10** (L-inf, no random start, so that every implementation computes the same thing)
  in images per second: ``rnb.attacks.pgd`` in fp32 and in its fastest mode on this device
  (bf16 autocast where bf16 is native: CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX; else
  fp32 is the fastest), ``torchattacks.PGD`` (when installed) and the textbook loop
  (:func:`textbook_pgd`). The fp32 results must agree with the textbook's: the same robust
  accuracy and (up to gradients whose sign rounding flips) the same pixels. bf16 flips the sign
  of many small gradient entries, so its examples differ; it must reach the same accuracy and at
  least 90% of the textbook's increase of the loss. ``agree`` says whether all of this holds.
* **A training epoch** of classical training, PGD-AT and TRADES, each with the profile's recipe
  (its steps, eps, optimizer; one epoch over ``train_n`` images): robust_nb's loop as the recipe
  runs it (on-device data and augmentation, channels_last, amp=None) and in plain fp32, against
  the textbook loop (:func:`textbook_epoch`): a torchvision-style dataset of PIL images with
  ``transforms`` (random crop, flip, ``ToTensor``), a ``DataLoader``, the same model and optimizer,
  and TRADES exactly as the authors' ``trades.py`` computes it.
* **Achieved FLOP/s** of each path (the FLOPs that ``torch.utils.flop_counter`` counts in one run,
  over its median time) as a fraction of a **measured peak**: the median rate of large matmuls
  on the same device in the same precision, timed in the same interleaved rounds (so under the
  same background load). Convolutions of a small network reach only part of
  it; the fraction says how much the rest (memory traffic, Python, data loading) costs.

Timing: one warm-up run of each path (the one whose FLOPs are counted), then ``repeats``
interleaved rounds (every path once per round, so background load hits them alike); medians
with the min-max spread, wall clock and this process's CPU time (the steadier measure on a
shared CPU: other jobs inflate wall time, not our CPU time). Absolute numbers depend on the
machine and its load; compare ratios from one run.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# -- timing --------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call, device synchronised around it."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, by the formulas of ``torch.utils.flop_counter.flop_registry``
    (matmuls and convolutions, forward and backward; elementwise work is not counted).

    ``FlopCounterMode`` itself cannot be used: its module tracker hooks break
    ``torch.autograd.grad`` with respect to a leaf input, which is how attacks take gradients
    ("A leaf node was passed to _will_engine_execute_node"); this dispatch mode applies the same
    formulas to the same operators without the per-module attribution."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with Counter():
        fn()
    return Counter.total


def interleaved(paths: dict[str, Callable[[], object]], device: torch.device,
                repeats: int) -> dict[str, dict]:
    """Warm up and count the FLOPs of every path, then time them in ``repeats`` interleaved
    rounds. Per path: FLOPs, wall and CPU seconds (median, min, max, all runs)."""
    flops = {name: count_flops(fn) for name, fn in paths.items()}      # also the warm-up
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            runs[name].append(timed(fn, device))
    out = {}
    for name, times in runs.items():
        wall, cpu = [t[0] for t in times], [t[1] for t in times]
        out[name] = {"flops": flops[name],
                     "wall_s": {"median": statistics.median(wall), "min": min(wall),
                                "max": max(wall), "runs": wall},
                     "cpu_s": {"median": statistics.median(cpu), "min": min(cpu),
                               "max": max(cpu), "runs": cpu}}
    return out


PEAK = "peak: matmul"            # the name prefix of the peak paths in every section


def matmul_paths(device: torch.device) -> dict[str, Callable[[], object]]:
    """Square matmuls (a batch of them per call, long enough to time) in fp32 and, where it is
    native, bf16: timed in every section's rounds beside the real paths, so that the "of peak"
    fractions compare rates measured under the same background load."""
    size, count = (8192, 10) if device.type == "cuda" else (1024, 8)
    g = torch.Generator(device=device).manual_seed(0)
    out = {}
    for dtype in [torch.float32] + ([torch.bfloat16] if native_bf16(device) else []):
        a = torch.randn(size, size, device=device, generator=g).to(dtype)
        b = torch.randn(size, size, device=device, generator=g).to(dtype)
        name = f"{PEAK} {'fp32' if dtype == torch.float32 else 'bf16'}"
        out[name] = lambda a=a, b=b: [a @ b for _ in range(count)]
    return out


def add_rates(section: dict) -> None:
    """Each path's achieved FLOP/s, and its fraction of the section's measured matmul peak in
    the path's precision; the peak paths move to ``section["peak_flops"]``."""
    paths = section["paths"]
    for t in paths.values():
        t["flops_per_s"] = t["flops"] / t["wall_s"]["median"]
    section["peak_flops"] = {name.split()[-1]: paths.pop(name)["flops_per_s"]
                             for name in [n for n in paths if n.startswith(PEAK)]}
    for t in paths.values():
        peak = section["peak_flops"].get(t["dtype"])
        t["fraction_of_peak"] = t["flops_per_s"] / peak if peak else None


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic is native here (else emulated, and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        from .training.base import cpu_has_fast_bf16

        return cpu_has_fast_bf16()
    return False


# -- the textbook versions -----------------------------------------------------------------------

def textbook_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float,
                 steps: int) -> Tensor:
    """L-inf PGD as tutorials write it: model in eval mode, a cross-entropy gradient per step,
    a signed step, clipping to the eps-ball and [0, 1]."""
    model.eval()
    x_adv = x.clone().detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        grad, = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def textbook_trades_loss(model: nn.Module, x: Tensor, y: Tensor, optimizer, eps: float,
                         alpha: float, steps: int, beta: float) -> Tensor:
    """TRADES' loss as the authors' ``trades.py`` computes it (yaodongyu/TRADES): the attack in
    eval mode recomputing ``model(x_natural)`` every step, then two clean forward passes."""
    kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    x_adv = x_adv.detach()
    optimizer.zero_grad()
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * kl(F.log_softmax(model(x_adv), dim=1),
                                     F.softmax(model(x), dim=1))
    return loss_natural + beta * loss_robust


class ImageDataset(torch.utils.data.Dataset):
    """What ``torchvision.datasets.MNIST`` / ``CIFAR10`` are: uint8 arrays, one PIL image per
    ``__getitem__``, passed through ``transform``."""

    def __init__(self, images: Tensor, labels: Tensor, transform):
        x = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)           # (N, H, W, C)
        self.data = x.squeeze(-1).numpy() if x.shape[-1] == 1 else x.numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def textbook_loader(images: Tensor, labels: Tensor, batch_size: int, augment: str,
                    padding: int, workers: int) -> torch.utils.data.DataLoader:
    from torchvision import transforms

    steps = []
    if "crop" in augment:
        steps.append(transforms.RandomCrop(images.shape[-1], padding=padding))
    if "flip" in augment:
        steps.append(transforms.RandomHorizontalFlip())
    dataset = ImageDataset(images, labels, transforms.Compose([*steps, transforms.ToTensor()]))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       num_workers=workers)


def textbook_epoch(model: nn.Module, loader, optimizer, device: torch.device, method: str,
                   options) -> float:
    """One epoch of the loop users write: batches from the DataLoader moved to the device,
    the attack (PGD-AT: :func:`textbook_pgd`; TRADES: :func:`textbook_trades_loss`), a step.
    Returns the mean training loss."""
    total, n = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if method == "trades":
            loss = textbook_trades_loss(model, x, y, optimizer, options.eps, options.alpha,
                                        options.steps, options.beta)
        else:
            if method == "pgd":
                x = textbook_pgd(model, x, y, options.eps, options.alpha, options.steps)
            model.train()
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total, n = total + loss.item() * len(y), n + len(y)
    return total / n


# -- the sections --------------------------------------------------------------------------------

def pgd_section(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float,
                repeats: int, steps: int = 10) -> dict:
    """PGD-``steps`` of every implementation on ``(x, y)``: timings, FLOPs, agreement."""
    from .attacks import pgd
    from .evaluation import accuracy

    device = next(model.parameters()).device
    model.eval()
    paths: dict[str, Callable[[], Tensor]] = {
        "textbook fp32": lambda: textbook_pgd(model, x, y, eps, alpha, steps),
        "robust_nb fp32": lambda: pgd(model, x, y, eps, alpha, steps, random_start=False)}
    notes = []
    if native_bf16(device):
        paths["robust_nb bf16"] = lambda: pgd(model, x, y, eps, alpha, steps,
                                              random_start=False, amp=True)
    else:
        notes.append(f"bf16 is not native on this {device.type}: fp32 is robust_nb's fastest mode")
    try:
        import torchattacks
    except ImportError:
        notes.append("torchattacks is not installed: its column is skipped "
                     "(pip install --no-deps torchattacks)")
    else:
        attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
        paths["torchattacks fp32"] = lambda: attack(x, y)

    def mean_loss(images: Tensor) -> float:
        with torch.no_grad():
            return F.cross_entropy(model(images), y).item()

    reference, clean_loss = paths["textbook fp32"](), mean_loss(x)
    ref_gain = mean_loss(reference) - clean_loss                # what the attack adds to the loss
    checks = {}
    for name, fn in paths.items():
        adv = fn()
        differ = (adv - reference).abs() > 1e-6
        checks[name] = {"robust_acc": accuracy(model, adv, y),
                        "pixels_differing": differ.float().mean().item(),
                        "loss_gain_vs_textbook": (mean_loss(adv) - clean_loss) / ref_gain}
    ref_acc = checks["textbook fp32"]["robust_acc"]
    for name, c in checks.items():
        if "bf16" in name:      # bf16 gradients flip some signs: as strong an attack, not equal
            c["agree"] = (abs(c["robust_acc"] - ref_acc) <= max(2 / len(y), 0.02)
                          and c["loss_gain_vs_textbook"] >= 0.9)
        else:                   # fp32: the same attack, pixel for pixel up to sign rounding
            c["agree"] = c["robust_acc"] == ref_acc and c["pixels_differing"] <= 0.01
    timings = interleaved({**paths, **matmul_paths(device)}, device, repeats)
    for name, t in timings.items():
        t["dtype"] = "bf16" if "bf16" in name else "fp32"
        if name in checks:
            t.update(checks[name], images_per_s=len(y) / t["wall_s"]["median"],
                     images_per_cpu_s=len(y) / t["cpu_s"]["median"])
    section = {"n": len(y), "steps": steps, "eps": eps, "alpha": alpha, "paths": timings,
               "agree": all(c["agree"] for c in checks.values()), "notes": notes}
    add_rates(section)
    return section


def training_section(cfg, data, model: nn.Module, methods: tuple[str, ...], train_n: int,
                     repeats: int, workers: int) -> dict:
    """One epoch of each method: robust_nb (recipe mode and fp32) vs the textbook loop."""
    from .training import recipe

    device = cfg.device
    x, y = (t[:train_n] for t in data.train)
    out = {}
    for method in methods:
        r = recipe(cfg, method)
        changes = dict(epochs=1)
        names = r.options.names()
        changes.update({k: v for k, v in (("robust_val", 0), ("eps_warmup_epochs", 0),
                                          ("select_best", False), ("guard", False))
                        if k in names})
        options = r.options.replace(**changes)
        padding = options.crop_padding if options.crop_padding is not None else (
            4 if x.shape[-1] >= 32 else 2)
        fp32 = options.replace(amp=False, channels_last=False)
        amp = native_bf16(device) and options.amp is not False
        paths = {"textbook fp32": _textbook_path(model, x, y, method, options, padding,
                                                  workers, device),
                 "robust_nb fp32": _trainer_path(model, x, y, r.trainer, fp32),
                 f"robust_nb recipe ({'bf16' if amp else 'fp32'})":
                     _trainer_path(model, x, y, r.trainer, options)}
        timings = interleaved({**paths, **matmul_paths(device)}, device, repeats)
        for name, t in timings.items():
            t["dtype"] = "bf16" if "bf16" in name else "fp32"
        out[method] = {"trainer": r.trainer.__name__, "batch_size": options.batch_size,
                       "images": len(y), "paths": timings}
        add_rates(out[method])
    return out


def _trainer_path(init: nn.Module, x: Tensor, y: Tensor, trainer: type, options):
    """One epoch of robust_nb's loop on a copy of ``init`` (so every run starts alike)."""
    return lambda: trainer(copy.deepcopy(init), options, quiet=True).fit((x, y))


def _textbook_path(init: nn.Module, x: Tensor, y: Tensor, method: str, options, padding: int,
                   workers: int, device: torch.device):
    """One epoch of the textbook loop on a copy of ``init``, same optimizer settings."""
    def epoch():
        net = copy.deepcopy(init)
        optimizer = torch.optim.SGD(net.parameters(), lr=options.lr, momentum=options.momentum,
                                    nesterov=options.nesterov, weight_decay=options.weight_decay)
        loader = textbook_loader(x, y, options.batch_size, options.augment, padding, workers)
        textbook_epoch(net, loader, optimizer, device, method, options)
    return epoch


def run(profile: str | None = None, *, n: int = 256, train_n: int = 1024, repeats: int = 3,
        methods: tuple[str, ...] = ("classical", "pgd", "trades"), workers: int = 0,
        seed: int = 0) -> dict:
    """The whole benchmark; a JSON-able dict (see the module docstring; :func:`table`)."""
    import platform

    from . import __version__
    from .config import setup
    from .data import load_dataset
    from .models import for_config

    cfg = setup(profile, seed=seed, verbose=False)
    data = load_dataset(cfg.dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = for_config(cfg, data)
    x, y = (t[:n].to(cfg.device) for t in data.test)
    return {
        "machine": {"device": str(cfg.device), "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine(),
                    "gpu": torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda"
                    else None, "torch": torch.__version__, "robust_nb": __version__},
        "profile": cfg.profile, "model": cfg.model, "dataset": cfg.dataset,
        "repeats": repeats,
        "pgd": pgd_section(model, x, y, cfg.eps_linf, cfg.alpha_linf, repeats),
        "training": training_section(cfg, data, model, methods, train_n, repeats, workers),
    }


# -- output --------------------------------------------------------------------------------------

def _spread(t: dict, key: str = "wall_s") -> str:
    s = t[key]
    return f"{s['median']:.3g} s ({s['min']:.3g}-{s['max']:.3g})"


def table(result: dict) -> str:
    """The result as a Markdown table: per path its time, its speed relative to the textbook
    loop (wall and CPU time), its achieved share of the measured peak."""
    m = result["machine"]
    sections = {"PGD": result["pgd"], **result["training"]}
    peaks = "; ".join(f"{name} " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in s["peak_flops"].items())
                      for name, s in sections.items())
    lines = [f"device {m['device']} ({m['gpu'] or m['cpu']}), {m['threads']} thread(s), torch "
             f"{m['torch']}; {result['profile']} profile, {result['model']} on "
             f"{result['dataset']}; medians of {result['repeats']} interleaved runs (min-max); "
             f"matmul peak in GFLOP/s, measured in each section's rounds: {peaks}", "",
             "| workload | path | time (min-max) | vs textbook, wall | vs textbook, CPU | "
             "of peak | check |", "|---|---|--:|--:|--:|--:|---|"]
    p = result["pgd"]
    rows = [(f"PGD-{p['steps']}, {p['n']} images", p["paths"],
             {k: ("agrees" if v["agree"] else "DISAGREES") + f": acc {v['robust_acc']:.3f}, "
                 f"{v['pixels_differing']:.0%} pixels differ, loss gain "
                 f"{v['loss_gain_vs_textbook']:.3f}x" for k, v in p["paths"].items()})]
    for method, s in result["training"].items():
        rows.append((f"{method} epoch, {s['images']} images", s["paths"], {}))
    for workload, paths, checks in rows:
        base = paths["textbook fp32"]
        for name, t in paths.items():
            wall = base["wall_s"]["median"] / t["wall_s"]["median"]
            cpu = base["cpu_s"]["median"] / t["cpu_s"]["median"]
            peak = f"{t['fraction_of_peak']:.0%}" if t["fraction_of_peak"] is not None else "-"
            lines.append(f"| {workload} | {name} | {_spread(t)} | {wall:.2f}x | {cpu:.2f}x | "
                         f"{peak} | {checks.get(name, '')} |")
    theirs = p["paths"].get("torchattacks fp32")
    if theirs is not None:
        ratios = [f"{name}: wall {theirs['wall_s']['median'] / t['wall_s']['median']:.2f}x, CPU "
                  f"{theirs['cpu_s']['median'] / t['cpu_s']['median']:.2f}x"
                  for name, t in p["paths"].items() if name.startswith("robust_nb")]
        lines.append(f"\nPGD speed relative to torchattacks.PGD: {'; '.join(ratios)}")
    lines += [f"\nnote: {note}" for note in p["notes"]]
    return "\n".join(lines)


# -- command line (``python -m robust_nb bench``) --------------------------------------------------

def add_arguments(parser) -> None:
    """The ``bench`` subcommand's options (robust_nb/__main__.py builds the parser)."""
    from pathlib import Path

    parser.add_argument("--profile", choices=("quick", "full"), default=None,
                        help="model, data and recipes of this profile (default: "
                             "$ROBUST_NB_PROFILE, else auto)")
    parser.add_argument("--n", type=int, default=256, help="images per PGD call")
    parser.add_argument("--train-n", type=int, default=1024,
                        help="training images per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--methods", nargs="+", default=["classical", "pgd", "trades"],
                        help="training methods to time")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers of the textbook loop (0: in the main process)")
    parser.add_argument("--json", type=Path, default=Path("results/bench.json"),
                        help="where the JSON goes")


def main(args) -> int:
    """Run the benchmark from parsed arguments; print the table, write the JSON."""
    import json

    from .files import atomic_write

    for name in ("n", "train_n", "repeats"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    result = run(args.profile, n=args.n, train_n=args.train_n, repeats=args.repeats,
                 methods=tuple(args.methods), workers=args.workers)
    atomic_write(args.json, json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nJSON: {args.json}")
    return 0 if result["pgd"]["agree"] else 1
