"""``python -m robust_nb.train``: train any method's recipe on any model and dataset from a shell.

    python -m robust_nb.train --method trades --model wrn_34_10 --dataset cifar10 --recipe full \\
        --out runs/trades
    python -m robust_nb.train --config run.toml --lr 0.05          # flags override the file
    torchrun --nproc_per_node=4 -m robust_nb.train --method pgd --recipe full --out runs/pgd

The run starts from a recipe (``rnb.training.recipe``: the method's options in the ``quick`` or
``full`` profile) and changes what the flags, or the ``--config`` file, say. Every field of the
method's options dataclass (``robust_nb/training/options.py``) is a flag; the flags are generated
from those fields, their types and their documentation, so this file lists none of them. Values:
the flag on the command line, else the config file, else the recipe.

Into ``--out`` go ``run.json`` (the resolved settings), ``checkpoint.pt`` (after every epoch,
written atomically; ``--resume`` continues from it), ``history.json`` and ``history.csv`` (one row
per epoch), ``model.pt`` (the weights to evaluate: the EMA copy when the recipe has one) and
``evaluation.json`` (clean accuracy on the test split and PGD accuracy on a stratified subset,
each with its 95% Wilson interval). Checkpoints and ``model.pt`` load with
``torch.load(..., weights_only=True)``; :func:`load_trained` rebuilds the model from ``model.pt``.

Under ``torchrun`` the same command trains with DistributedDataParallel (``robust_nb.distributed``):
``--batch-size`` stays the global batch, rank 0 writes every file, and the final evaluation is
split over the ranks. Exit codes: 0 done (or stopped by ``--stop-after``), 1 a run-time error
(dataset missing offline, checkpoint mismatch, divergence), 2 bad arguments or config file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .files import atomic_write

CONFIG_FORMATS = (".toml", ".yaml", ".yml")
MODEL_FORMAT = "robust_nb.model/1"


class UsageError(ValueError):
    """Bad arguments or config file (exit code 2)."""


# -- the options of every method, read from the dataclasses ----------------------------------

def method_options() -> dict[str, type]:
    """Each training method's options dataclass, read from its recipe's trainer."""
    from .config import setup
    from .training import METHODS, recipe

    with torch.random.fork_rng(devices=[]):        # setup() seeds; leave the caller's state
        threads = torch.get_num_threads()
        cfg = setup("quick", verbose=False)
        torch.set_num_threads(threads)
    return {m: recipe(cfg, m).trainer.Options for m in METHODS}


def option_fields(methods: dict[str, type]) -> dict[str, dict[str, dataclasses.Field]]:
    """Every option name of any method -> {method: its field}, in the order the classes
    declare them (a name may mean something a little different per method, e.g. ``alpha``)."""
    out: dict[str, dict[str, dataclasses.Field]] = {}
    for method, cls in methods.items():
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, {})[method] = f
    return out


def _option_help(fields: dict[str, dataclasses.Field], n_methods: int) -> str:
    """The documentation of an option; per group of methods where the docs differ."""
    by_doc: dict[str, list[str]] = {}
    for method, f in fields.items():
        by_doc.setdefault(f.metadata["doc"], []).append(method)
    if len(by_doc) == 1:
        (doc, users), = by_doc.items()
        return doc if len(users) == n_methods else f"{doc} [{', '.join(users)}]"
    return "; ".join(f"[{', '.join(users)}] {doc}" for doc, users in by_doc.items())


_WORDS = {"none": None, "true": True, "false": False}


def _converter(annotation: str):
    """A string -> value parser for a field annotated ``annotation`` ("int", "float | None",
    "bool | str | None", "tuple", ...); the options' own checks validate the result."""
    parts = {p.strip() for p in str(annotation).split("|")}

    def convert(text: str):
        low = text.strip().lower()
        if low in _WORDS and (("None" in parts and low == "none") or
                              ("bool" in parts and low != "none")):
            return _WORDS[low]
        for name, fn in (("int", int), ("float", float)):
            if name in parts:
                try:
                    return fn(text)
                except ValueError:
                    continue
        if "str" in parts or "tuple" in parts:
            return _scalar(text) if "tuple" in parts else text
        raise argparse.ArgumentTypeError(f"expected {annotation}, got {text!r}")

    convert.__name__ = str(annotation)             # argparse names the type in its errors
    return convert


def _scalar(text: str):
    """An element of a tuple option: an int, else a float, else the string."""
    for fn in (int, float):
        try:
            return fn(text)
        except ValueError:
            pass
    return text


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- the parser ------------------------------------------------------------------------------

# Run settings (not training options): name -> (default, help). Types come from the defaults'
# use in _add_run_arguments.
RUN_DEFAULTS: dict[str, Any] = dict(
    method="classical", recipe=None, model=None, dataset=None, data_root=None, download=True,
    image_size=224, stem=None, width=None, filters=None, batchnorm=None, holdout=None, out=None,
    resume=False, stop_after=None, eval_n=None, eval_steps=None, eval_eps=None,
    sync_batchnorm=False, quiet=False)


def build_parser(methods: dict[str, type] | None = None) -> argparse.ArgumentParser:
    methods = methods if methods is not None else method_options()
    from .data import DATASETS, IMAGEFOLDER
    from .models import available_models

    parser = argparse.ArgumentParser(
        prog="python -m robust_nb.train",
        description="Train a robust_nb method's recipe (quick or full profile) with any option "
                    "changed; under torchrun, with DistributedDataParallel. Values: this command "
                    "line, else --config, else the recipe.",
        epilog="Outputs in --out: run.json, checkpoint.pt, history.json, history.csv, model.pt, "
               "evaluation.json. Exit codes: 0 done, 1 run-time error, 2 bad arguments.",
        argument_default=argparse.SUPPRESS, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("the run")
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="TOML or YAML file: run settings at the top level (method, recipe, "
                          "model, dataset, out, ...; the names of these flags with _), training "
                          "options in an [options] table")
    run.add_argument("--method", choices=list(methods),
                     help=f"training method (default {RUN_DEFAULTS['method']})")
    run.add_argument("--recipe", choices=("quick", "full"),
                     help="which profile's recipe to start from (default: $ROBUST_NB_PROFILE, "
                          "else full on a CUDA machine, else quick)")
    run.add_argument("--model", help=f"architecture: {', '.join(available_models())} or any "
                                     f"wrn_<6n+4>_<k> (default: the recipe's, else the profile's)")
    run.add_argument("--dataset", help=f"{', '.join(DATASETS)} or {IMAGEFOLDER}PATH (an "
                                       f"ImageNet-style folder; default: the profile's)")
    run.add_argument("--data-root", type=Path, metavar="DIR",
                     help="where torchvision datasets live (default $ROBUST_NB_DATA, else "
                          "~/.cache/robust_nb)")
    run.add_argument("--download", action=argparse.BooleanOptionalAction,
                     help="download a missing torchvision dataset (default: yes)")
    run.add_argument("--image-size", type=int, metavar="PX",
                     help="imagefolder only: side of the stored images (shorter side resized, "
                          "centre-cropped; default 224)")
    run.add_argument("--stem", choices=("cifar", "imagenet"),
                     help="ResNet stem (default: imagenet for an imagefolder dataset, else cifar)")
    run.add_argument("--width", type=float, help="ResNet-family width multiplier (default: the "
                                                 "profile's)")
    run.add_argument("--filters", type=int, help="ConvNet base width (default: the profile's)")
    run.add_argument("--batchnorm", action=argparse.BooleanOptionalAction,
                     help="BatchNorm in the ConvNet (default: the profile's; ResNets always have it)")
    run.add_argument("--holdout", type=int, metavar="N",
                     help="training images held out for validation (default: the recipe's; 0 "
                          "validates on the test split)")
    run.add_argument("--out", type=Path, metavar="DIR", help="output folder (required)")
    run.add_argument("--resume", action="store_true",
                     help="continue from DIR/checkpoint.pt (same settings; starts afresh if "
                          "there is none yet)")
    run.add_argument("--stop-after", type=int, metavar="EPOCHS",
                     help="train at most this many epochs now, then stop (for jobs with a time "
                          "limit; --resume continues on the same schedule)")
    run.add_argument("--eval-n", type=int, metavar="N",
                     help="test images attacked by the final PGD (default: the profile's n_attack)")
    run.add_argument("--eval-steps", type=int, metavar="K",
                     help="steps of the final PGD, step eps/4 (default: the profile's)")
    run.add_argument("--eval-eps", type=float,
                     help="eps of the final PGD (default: the method's eps, else the profile's)")
    run.add_argument("--sync-batchnorm", action="store_true",
                     help="under torchrun on GPUs: BatchNorm statistics over all ranks' images")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    group = parser.add_argument_group(
        "training options",
        "every field of the method's options dataclass; default: the recipe's value. "
        "Booleans take --name / --no-name; tuples take several values (none for empty); "
        "'none' is None where allowed.")
    for name, fields in option_fields(methods).items():
        kw: dict[str, Any] = dict(help=_option_help(fields, len(methods)).replace("%", "%%"))
        # the widest type any method gives the name (alpha: float, or float | None)
        annotation = " | ".join(dict.fromkeys(part.strip() for f in fields.values()
                                              for part in str(f.type).split("|")))
        if annotation == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _converter(annotation)
            kw["metavar"] = annotation.upper().replace(" | ", "|").replace("NONE", "none")
            if annotation == "tuple":
                kw["nargs"] = "*"
        group.add_argument(_flag(name), dest=f"opt_{name}", **kw)
    return parser


# -- config files ----------------------------------------------------------------------------

def read_config(path: Path) -> dict:
    """A TOML or YAML config file as a dict (``tomllib`` on Python 3.11+, ``tomli`` before)."""
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in CONFIG_FORMATS:
        raise UsageError(f"config file {path}: use {', '.join(CONFIG_FORMATS)}")
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as err:  # noqa: BLE001 -- tomllib and yaml raise their own error types
        raise UsageError(f"config file {path} is not valid {suffix[1:].upper()}: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table of settings")
    return data


def resolve(args: argparse.Namespace, methods: dict[str, type]) -> tuple[dict, dict]:
    """(run settings, option overrides): the command line over the config file over defaults."""
    given = vars(args)
    config = read_config(given["config"]) if "config" in given else {}
    options = dict(config.pop("options", None) or {})
    if not isinstance(options, dict):
        raise UsageError("config file: 'options' must be a table of training options")
    unknown = sorted(set(config) - set(RUN_DEFAULTS))
    if unknown:
        raise UsageError(f"config file: unknown setting(s) {', '.join(unknown)}; run settings are "
                         f"{', '.join(RUN_DEFAULTS)}, training options go in [options]")
    run = {**RUN_DEFAULTS, **config, **{k: v for k, v in given.items() if k in RUN_DEFAULTS}}
    for key in ("out", "data_root"):
        if run[key] is not None:
            run[key] = Path(run[key])
    options.update({k[4:]: tuple(v) if isinstance(v, list) else v
                    for k, v in given.items() if k.startswith("opt_")})
    if run["method"] not in methods:
        raise UsageError(f"unknown method {run['method']!r}; choose one of {', '.join(methods)}")
    known = {f.name for f in dataclasses.fields(methods[run["method"]])}
    foreign = sorted(set(options) - known)
    if foreign:
        raise UsageError(f"method {run['method']!r} has no option(s) {', '.join(foreign)}; its "
                         f"options: {', '.join(sorted(known))}")
    if run["out"] is None:
        raise UsageError("--out DIR is required (where checkpoints, history and evaluation go)")
    for key, low in (("eval_n", 1), ("eval_steps", 1), ("stop_after", 1), ("holdout", 0),
                     ("image_size", 8)):
        value = run[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < low):
            raise UsageError(f"{key.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    if run["eval_eps"] is not None and not run["eval_eps"] > 0:
        raise UsageError(f"eval-eps must be positive, got {run['eval_eps']!r}")
    return run, options


# -- the run ---------------------------------------------------------------------------------

def model_kwargs(cfg, data, name: str, run: dict) -> dict:
    """The :func:`~robust_nb.models.build_model` arguments of the run's model: the data's
    classes, channels and statistics, the profile's sizes (as ``rnb.models.for_config`` gives
    them) and the run's ``--width``, ``--filters``, ``--batchnorm``, ``--stem``. Stored in
    ``model.pt`` so that :func:`load_trained` rebuilds the same architecture."""
    from .data import IMAGEFOLDER

    kw: dict[str, Any] = dict(num_classes=data.num_classes, in_channels=data.in_channels,
                              mean=list(data.mean), std=list(data.std))
    if name.lower() == "convnet":
        if run["width"] is not None or run["stem"] is not None:
            raise UsageError("--width and --stem apply to the ResNet family, not the convnet")
        kw["filters"] = cfg.convnet_filters if run["filters"] is None else run["filters"]
        kw["batchnorm"] = cfg.convnet_batchnorm if run["batchnorm"] is None else run["batchnorm"]
    else:
        if run["filters"] is not None or run["batchnorm"] is not None:
            raise UsageError("--filters and --batchnorm apply to the convnet only")
        kw["width"] = cfg.width if run["width"] is None else run["width"]
        kw["stem"] = run["stem"] or ("imagenet" if data.name.startswith(IMAGEFOLDER) else "cifar")
    return kw


def _build_model(name: str, kwargs: dict, seed: int, device: torch.device):
    from .models import build_model

    with torch.random.fork_rng(devices=[]):            # the same weights whatever came before
        torch.manual_seed(seed)
        try:
            model = build_model(name, **kwargs)
        except ValueError as err:
            raise UsageError(str(err)) from err
    return model.to(device)


def load_trained(out: str | Path, device: torch.device | str = "cpu"):
    """The model a run wrote to ``out/model.pt``, rebuilt and loaded (``weights_only=True``),
    in eval mode.

    >>> model = robust_nb.train.load_trained("runs/trades")
    """
    from .training.checkpoint import safe_load

    state = safe_load(Path(out) / "model.pt", MODEL_FORMAT, map_location=device)
    model = _build_model(state["model"], state["build"], 0, torch.device(device))
    model.load_state_dict(state["state_dict"])
    return model.eval()


def evaluate(model, test: tuple, *, eps: float, steps: int, norm: str, n_attack: int,
             seed: int, batch_size: int) -> dict:
    """Clean accuracy on every test image and PGD accuracy on a stratified ``n_attack`` of them
    (step eps/4, random start), each as ``Accuracy.as_dict()`` (value, 95% Wilson interval).
    Under torch.distributed each rank takes its share of the images and the counts are summed."""
    from .data import attack_subset
    from .evaluation import predict_logits, robust_accuracy
    from .stats import Accuracy

    device = next(model.parameters()).device
    x, y = (t.to(device) for t in test)
    xs, ys = distributed.shard(x, y)
    clean = (predict_logits(model, xs, batch_size).argmax(1) == ys).sum().item()
    xa, ya = attack_subset((x, y), min(n_attack, len(y)), seed)
    xa, ya = distributed.shard(xa, ya)
    robust = round(robust_accuracy(model, xa, ya, "pgd", eps=eps, alpha=eps / 4, steps=steps,
                                   norm=norm, random_start=True, seed=seed + distributed.rank(),
                                   batch_size=batch_size) * len(ya)) if len(ya) else 0
    clean, robust, n_attacked = distributed.sum_over_ranks(clean, robust, len(ya))
    return {"clean": Accuracy.from_counts(int(clean), len(y)).as_dict(),
            "pgd": {**Accuracy.from_counts(int(robust), int(n_attacked)).as_dict(),
                    "eps": eps, "alpha": eps / 4, "steps": steps, "norm": norm}}


def history_csv(records: list[dict]) -> str:
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def _say(text: str) -> None:
    if distributed.is_main():
        print(text, flush=True)


def train(run: dict, option_overrides: dict, device: torch.device | None = None) -> int:
    """Train and evaluate as ``run`` says (see :func:`resolve`); return the exit code."""
    from . import data as rnb_data
    from .config import setup
    from .training import recipe
    from .training.recipes import holdout_split

    seed = option_overrides.get("seed", 0)
    cfg = setup(run["recipe"], seed=seed if isinstance(seed, int) else 0,
                verbose=distributed.is_main())
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    r = recipe(cfg, run["method"])
    try:
        options = r.options.replace(**option_overrides) if option_overrides else r.options
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err
    dataset = run["dataset"] or cfg.dataset
    # Rank 0 reads (and downloads, if need be) first; the others wait, then read its files, so
    # that several processes never download into the same folder at once.
    if not distributed.is_main():
        distributed.barrier()
    try:
        data = rnb_data.load_dataset(dataset, root=run["data_root"], download=run["download"],
                                     image_size=run["image_size"], device=cfg.device)
    except rnb_data.DatasetUnavailableError:
        raise
    except ValueError as err:                      # an unknown name, an undecodable image
        raise UsageError(str(err)) from err
    if distributed.is_main():
        distributed.barrier()
    name = run["model"] or r.model or cfg.model
    build = model_kwargs(cfg, data, name, run)
    model = _build_model(name, build, options.seed, cfg.device)
    if run["sync_batchnorm"]:
        model = distributed.sync_batchnorm(model)
    holdout = r.holdout if run["holdout"] is None else run["holdout"]
    train_split, val = (holdout_split(data, holdout, options.seed) if holdout
                        else (data.train, data.test))

    out: Path = run["out"]
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists() and not run["resume"]:
        raise UsageError(f"{out} already holds a run ({checkpoint}); pass --resume to continue "
                         f"it, or choose another --out")
    world = distributed.world_size()
    settings = {"method": run["method"], "recipe": cfg.profile, "trainer": r.trainer.__name__,
                "model": name, "dataset": dataset, "holdout": holdout,
                "options": options.to_dict(), "world_size": world, "device": str(cfg.device),
                "torch": torch.__version__, "source": r.source,
                "run": {k: str(v) if isinstance(v, Path) else v for k, v in run.items()}}
    if distributed.is_main():
        atomic_write(out / "run.json", json.dumps(settings, indent=2) + "\n")
    _say(f"training {run['method']!r} ({r.trainer.__name__}, {cfg.profile} recipe) on {name}, "
         f"{dataset}: {options.epochs} epoch(s), global batch {options.batch_size}"
         + (f" over {world} processes" if world > 1 else "") + f"; output in {out}/")

    trainer = r.trainer(model, options, checkpoint=checkpoint, quiet=run["quiet"])
    if run["resume"] and not checkpoint.exists():
        _say(f"--resume: no checkpoint in {out} yet; starting afresh")
    history = trainer.fit(train_split, val, resume=run["resume"], stop_after=run["stop_after"])
    if distributed.is_main():
        atomic_write(out / "history.json", json.dumps(history.to_dict(), indent=2) + "\n")
        atomic_write(out / "history.csv", history_csv(history.records))
    if trainer.epoch < options.epochs and trainer.stop_reason is None:
        _say(f"stopped after epoch {trainer.epoch} of {options.epochs} (--stop-after); continue "
             f"with --resume")
        return 0

    eps = next(v for v in (run["eval_eps"], getattr(options, "eps", None), cfg.eps_linf)
               if v is not None and v > 0)                  # a method trained at eps 0: the profile's
    result = evaluate(trainer.eval_model, data.test, eps=eps,
                      steps=cfg.attack_steps if run["eval_steps"] is None else run["eval_steps"],
                      norm=getattr(options, "norm", "linf"),
                      n_attack=cfg.n_attack if run["eval_n"] is None else run["eval_n"],
                      seed=options.seed, batch_size=options.eval_batch_size)
    if distributed.is_main():
        from .stats import Accuracy

        weights = {"format": MODEL_FORMAT, "model": name, "build": build,
                   "num_classes": data.num_classes, "settings": json.dumps(settings),
                   "state_dict": trainer.eval_model.state_dict()}
        atomic_write(out / "model.pt", lambda f: torch.save(weights, f))
        atomic_write(out / "evaluation.json", json.dumps(result, indent=2) + "\n")
        clean = Accuracy(result["clean"]["value"], result["clean"]["n"])
        pgd = Accuracy(result["pgd"]["value"], result["pgd"]["n"])
        print(f"clean accuracy {clean}\nPGD-{result['pgd']['steps']} accuracy at eps "
              f"{eps:.4g}: {pgd}" + (f"\nstopped early: {history.stopped}" if history.stopped
                                     else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .data import DatasetUnavailableError
    from .training import CheckpointError, TrainingDiverged

    methods = method_options()
    parser = build_parser(methods)
    args = parser.parse_args(argv)
    try:
        run, options = resolve(args, methods)
    except UsageError as err:
        parser.error(str(err))                      # exits with code 2
    try:
        device = distributed.init_from_env()
        result = train(run, options, device)
        # Every rank finishes its collectives before any rank tears the group down (a rank that
        # left early once made gloo's threads abort the other: "terminate called without an
        # active exception", exit code -6, in a 2-process test under heavy load).
        distributed.barrier()
        return result
    except UsageError as err:
        parser.error(str(err))
    except (DatasetUnavailableError, CheckpointError, TrainingDiverged, ValueError) as err:
        # ValueError: settings that only clash at run time (a batch size that the number of
        # processes does not divide, SyncBatchNorm on a CPU, ...)
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
