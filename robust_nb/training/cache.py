"""Load-or-train: a trained model is cached under ``results/cache/`` and reused by later notebooks.

The cache key is a SHA-256 over everything that decides the trained weights: the model's
``repr`` and parameter/buffer shapes, the method's class name and its ``config_dict()``, a
fingerprint of the training (and validation) data, the profile and an optional ``key_extra``.
Asking for the same recipe anywhere (``train_method(cfg, data, "classical")`` in notebooks 03 to
08) hits the same file. Files are written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from ..config import resolve_profile
from .checkpoint import CACHE_FORMAT, CheckpointError, atomic_save, safe_load
from .history import History

ENV_CACHE = "ROBUST_NB_CACHE"


def default_cache_dir() -> Path:
    """``$ROBUST_NB_CACHE``, else ``results/cache`` at the repository root (for an editable
    install; notebooks run inside ``notebooks/`` and tests at the root, and both must share it),
    else ``results/cache`` under the current folder."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        return root / "results" / "cache"
    return Path.cwd() / "results" / "cache"


def tensor_fingerprint(t: Tensor, max_values: int = 1 << 20) -> str:
    """A SHA-256 of a tensor's shape, dtype and values (a fixed strided subset when it is large,
    so fingerprinting CIFAR-10 costs milliseconds, not seconds)."""
    flat = t.detach().reshape(-1)
    if flat.numel() > max_values:
        flat = flat[:: -(-flat.numel() // max_values)]
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(flat.to("cpu", copy=True).contiguous().numpy().tobytes())
    return h.hexdigest()


def _data_pair(data, split: str):
    from ..data import Dataset

    if data is None:
        return None
    if isinstance(data, Dataset):
        return getattr(data, split)
    return tuple(data)


def cache_key(model: nn.Module, method: str, config: dict, train, val=None, *,
              profile: str | None = None, key_extra=None) -> str:
    """The hex SHA-256 that names a cache entry (see the module docstring)."""
    shapes = [(name, tuple(t.shape)) for name, t in
              list(model.named_parameters()) + list(model.named_buffers())]
    payload = {
        "model": repr(model), "shapes": shapes, "method": method, "config": config,
        "train": [tensor_fingerprint(t) for t in _data_pair(train, "train")],
        "val": ([tensor_fingerprint(t) for t in _data_pair(val, "test")]
                if val is not None else None),
        "profile": profile if profile is not None else resolve_profile()[0],
        "extra": key_extra,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_or_train(method_cls: type, build: Callable[[], nn.Module], train, val=None, *,
                  options=None, cache_dir: str | Path | None = None, key_extra=None,
                  quiet: bool = False, profile: str | None = None,
                  make_callbacks: Callable[[nn.Module], list] | None = None,
                  announce: str | None = None, **trainer_kwargs) -> tuple[nn.Module, History]:
    """Return ``(model, history)`` from the cache, or train with ``method_cls`` and cache it.

    ``build()`` returns a fresh model (on the training device); ``options`` (the method's
    options dataclass) and ``trainer_kwargs`` go to the trainer; ``make_callbacks(model)``, if
    given, returns callbacks bound to that model (e.g. a DropBlock schedule). The returned model
    holds the evaluation weights (the EMA copy when EMA is on) and is in eval mode.

    While training, a checkpoint is written after every epoch beside the entry
    (``<entry>.partial.pt``); a run that was interrupted (a kernel restart, a killed process)
    resumes from it with the same result as an uninterrupted run, and the file is removed once
    the entry is written. ``announce``, if given, is printed (even when ``quiet``) before a
    model that is not in the cache is trained, so that minutes of work are never silent.
    """
    model, trainer, key, path = _entry(method_cls, build, train, val, options=options,
                                       cache_dir=cache_dir, key_extra=key_extra, quiet=quiet,
                                       profile=profile, make_callbacks=make_callbacks,
                                       **trainer_kwargs)
    if path.exists():
        entry = safe_load(path, CACHE_FORMAT, map_location=trainer.device)
        if entry.get("key") != key:
            raise CheckpointError(f"{path} holds the entry for another key; delete it")
        try:
            model.load_state_dict(entry["model"])
        except RuntimeError as err:
            raise CheckpointError(f"{path} does not fit the model built now ({str(err)[:200]}); "
                                  f"delete it to retrain") from err
        if not quiet:
            print(f"loaded cached {method_cls.__name__} model from {path}")
        return model.eval(), History.from_dict(json.loads(entry["history"]))
    partial = partial_path(path)
    trainer.checkpoint = partial
    if announce:
        print(announce, flush=True)
    if partial.exists() and not quiet:
        print(f"resuming {method_cls.__name__} from {partial}")
    history = trainer.fit(train, val, resume=True)
    final = trainer.eval_model
    atomic_save({"format": CACHE_FORMAT, "key": key, "method": method_cls.__name__,
                 "config": json.dumps(trainer.config_dict()), "model": final.state_dict(),
                 "history": json.dumps(history.to_dict())}, path)
    partial.unlink(missing_ok=True)
    if final is not model:            # EMA: return the model built by build() with EMA weights
        model.load_state_dict(final.state_dict())
    return model.eval(), history


def _entry(method_cls: type, build: Callable[[], nn.Module], train, val=None, *, options=None,
           cache_dir=None, key_extra=None, quiet: bool = False, profile: str | None = None,
           make_callbacks=None, **trainer_kwargs):
    """The model, its trainer, the cache key and the entry's path (nothing is trained)."""
    model = build()
    callbacks = list(trainer_kwargs.pop("callbacks", ()))
    if make_callbacks is not None:
        callbacks += list(make_callbacks(model))
    trainer = method_cls(model, options, quiet=quiet, callbacks=callbacks, **trainer_kwargs)
    key = cache_key(model, method_cls.__name__, trainer.config_dict(), train, val,
                    profile=profile, key_extra=key_extra)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / \
        f"{method_cls.__name__}-{type(model).__name__}-{key[:16]}.pt"
    return model, trainer, key, path


def cached_entry(method_cls: type, build: Callable[[], nn.Module], train, val=None,
                 **kwargs) -> tuple[Path, bool, nn.Module]:
    """Where :func:`load_or_train` with these arguments keeps its model, whether the file exists
    already, and the freshly built (untrained) model the key was computed from."""
    model, _, _, path = _entry(method_cls, build, train, val, **kwargs)
    return path, path.exists(), model


def partial_path(entry: Path) -> Path:
    """Where the per-epoch checkpoint of a cache entry in training lives."""
    return entry.with_name(entry.stem + ".partial.pt")
