"""Atomic checkpoint files and their safe loading.

A file is written to a temporary name in the same folder and moved over the target with
``os.replace`` (atomic on POSIX and Windows), so a crash mid-write never leaves a half-written
checkpoint in place of the last good one. Files are read with ``torch.load(weights_only=True)``:
only tensors and plain containers are unpickled, never arbitrary code. Every file carries a
``format`` tag, so a foreign ``.pt`` file (or a cache entry given as a checkpoint) is refused with
a clear message instead of failing later on a missing key.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..files import atomic_write

CHECKPOINT_FORMAT = "robust_nb.checkpoint/1"
CACHE_FORMAT = "robust_nb.cache/1"


class CheckpointError(RuntimeError):
    """A checkpoint or cache file is missing, corrupt, foreign or does not match the run."""


def atomic_save(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`robust_nb.files.atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: str | os.PathLike, expected_format: str, map_location=None) -> dict:
    """Load a file written by :func:`atomic_save`; clear :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 -- the unpickler raises many types on bad bytes
        # (RuntimeError, EOFError, UnpicklingError, struct.error, BadZipFile, ...); all mean the
        # same thing here, and the original error is chained.
        raise CheckpointError(
            f"{path} is not a readable robust_nb file (corrupt, truncated, or not written by "
            f"torch.save with plain tensors): {type(err).__name__}: {str(err)[:300]}\n"
            f"Delete it to start afresh.") from err
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt != expected_format:
        raise CheckpointError(
            f"{path} is not a {expected_format!r} file (found format {fmt!r}); it was written by "
            f"something else. Point to the right file, or delete it to start afresh.")
    return obj
