"""torch.distributed for the training loop: process groups from ``torchrun``, and small collectives.

The engine is PyTorch's own: ``torchrun --nproc_per_node=N -m robust_nb.train ...`` starts N
processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`init_from_env` joins them into the default process group (NCCL on CUDA GPUs, gloo on
CPUs) and returns this process's device; the trainers then wrap the model in
``DistributedDataParallel`` (see ``ClassicalTraining``'s ``distributed`` argument). What a rank
does alone and what it shares:

* data: every rank draws the same permutation from the shared seed and trains on its slice of
  each global batch (``rnb.data.DeviceLoader(..., rank=, world_size=)``);
* gradients: averaged by DDP during the backward pass; every rank takes the same optimizer step;
* evaluation and attacks: each rank attacks its :func:`shard` of the images and the correct
  counts are summed (:func:`sum_over_ranks`);
* files: only rank 0 (:func:`is_main`) writes checkpoints, histories and logs.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing here does anything: one
process, ``world_size() == 1``, ``rank() == 0``.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets
    ``WORLD_SIZE`` and ``RANK``) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def init_from_env(timeout_s: float = 1800.0) -> torch.device | None:
    """Join the process group that ``torchrun`` set up in the environment; return this rank's
    device (``cuda:LOCAL_RANK`` with NCCL when CUDA is available, else the CPU with gloo).
    Returns ``None`` (and does nothing) when the process was not launched as one of several."""
    if not launched():
        return None
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start the "
                           f"processes with torchrun (see the README, 'Scaling out')")
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                               f"CUDA device(s): --nproc_per_node must not exceed the GPUs")
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def shutdown() -> None:
    """Leave the process group (at the end of a run, also after an error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(*values: float) -> list[float]:
    """The sums over all ranks of a few numbers (counts, summed losses), one collective;
    the numbers themselves with one process."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_(tensor: Tensor, average: bool = False) -> Tensor:
    """Sum (or average) ``tensor`` over the ranks in place; the tensor itself with one process."""
    if is_distributed():
        buf = tensor.to(_collective_device(), torch.float64)
        dist.all_reduce(buf)
        if average:
            buf /= world_size()
        tensor.copy_(buf)
    return tensor


def shard(*tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's contiguous share of the rows of each tensor (sizes differ by at most one; a
    rank may get none when there are fewer rows than ranks)."""
    r, n = rank(), world_size()
    return tuple(t.tensor_split(n)[r] for t in tensors)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm replaced by ``SyncBatchNorm`` (batch statistics over all
    ranks' images). PyTorch implements it for CUDA (and XPU) tensors only."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        raise ValueError("SyncBatchNorm runs on GPUs only (PyTorch has no CPU kernel for it); "
                         "train without --sync-batchnorm on CPUs, or with a model without "
                         "BatchNorm")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` on its device (the module whose forward passes
    the trainers backpropagate through; attacks and evaluation use ``model`` itself)."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
