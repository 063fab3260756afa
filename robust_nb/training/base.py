"""`ClassicalTraining`: the one training loop of the course, which every robust method extends.

A method is a small subclass that changes how a batch's loss is computed, never a copy of the
loop. The hooks, in the order the loop calls them:

* ``callbacks``: each ``cb(epoch)`` at the start of every epoch (0-based), e.g. a
  ``rnb.models.DropBlockSchedule``;
* :meth:`ClassicalTraining.perturb` ``(x, y) -> x'``: default identity; adversarial training
  returns adversarial examples here (model in train mode; it may switch to eval with
  ``rnb.attacks.attack_mode`` and must not touch parameter grads);
* :meth:`ClassicalTraining.training_loss` ``(x, y) -> (loss, logits)``: default = perturb, then
  mixup if ``mixup_alpha > 0``, then cross-entropy (with label smoothing / soft targets), or with
  ``augmix=True`` the AugMix objective (:func:`robust_nb.augmix.augmix_loss`: clean + two AugMix
  views, cross-entropy + Jensen-Shannon consistency); runs inside ``torch.autocast``; TRADES/FIRE
  override it whole;
* :meth:`ClassicalTraining.on_epoch_end` ``(epoch, record)``: after the epoch's evaluation; may
  set ``self.stop_reason`` to stop training, or restore weights;
* :meth:`ClassicalTraining.config_dict`: the JSON-able hyperparameters (checkpoint config and the
  load-or-train cache key), from the method's options dataclass (:mod:`.options`).

What the loop does for every method: on-device batches and augmentation (``rnb.data.DeviceLoader``),
SGD (momentum, Nesterov) / Adam / AdamW, per-step learning-rate schedules with warm-up
(:mod:`.schedules`), mixed precision through ``torch.autocast`` on the model's device, optional
``channels_last`` and gradient clipping, an exponential moving average (EMA) of the weights *and*
BatchNorm buffers, an abort with :class:`TrainingDiverged` on a non-finite loss, atomic
per-epoch checkpoints with exact resume, and a :class:`History`.

Distributed data parallel (``distributed``; :mod:`robust_nb.distributed`): in a process group
started by ``torchrun``, the trainer wraps the model in ``DistributedDataParallel``: the training
forward passes go through the wrapper (:attr:`ClassicalTraining.net`), so gradients are averaged
over the ranks in the backward pass; attacks, EMA, evaluation and checkpoints use the model
itself. ``batch_size`` stays the global batch (``batch_size / world_size`` images per rank; the
``DeviceLoader`` gives each rank its slice of the batch one process would draw), so a run on N
processes follows the one-process run of the same options up to float rounding and BatchNorm
(per-rank batch statistics; convert the model with ``rnb.distributed.sync_batchnorm`` on GPUs to
share them). Losses, accuracies and evaluations are summed over the ranks; only rank 0 writes
checkpoints and shows progress. Every rank draws the same random numbers (data order, crops,
mixup, TRADES' start noise, dropout) except the attacks' random starts, seeded per rank, so rank
0's checkpoint resumes every rank exactly.

Host synchronisation: per-step losses and correct counts stay on the device; the host reads them
only every ``log_every`` steps and at the end of an epoch. That is also when a non-finite loss is
noticed: the abort happens at the next check (at most ``log_every - 1`` steps late; on a CPU a
per-step check would cost nothing, but the loop is the same on every device). The exception names
the *first* non-finite step, read back from the device buffer, and no checkpoint is written for
the failed epoch, so the last good one stays intact.

EMA: ``ema = decay * ema + (1 - decay) * weights`` after every optimizer step, over parameters
and BatchNorm running statistics (:class:`~robust_nb.training.ema.WeightEMA`: what
``AveragedModel`` with ``get_ema_multi_avg_fn`` and ``use_buffers=True`` computes, without its
per-step host sync); the first update copies the weights. Evaluation, ``eval_model`` and saving
use the EMA copy when ``ema_decay > 0``. This is the weight averaging of Polyak & Juditsky (1992)
in its exponential form, as used e.g. by Gowal et al., "Uncovering the limits of adversarial
training against norm-bounded adversarial examples", 2020, https://arxiv.org/abs/2010.03593.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Dataset, DeviceLoader, check_images
from ..evaluation import predict_logits
from ..modes import model_device, model_mode
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_save, safe_load
from .ema import WeightEMA
from .history import History
from .options import TrainOptions
from .schedules import lr_factor


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; training stopped.

    Attributes ``epoch`` (0-based), ``step`` (0-based, within the epoch), ``global_step`` and
    ``losses`` (the last finite losses before it, then the non-finite one).
    """

    def __init__(self, message: str, *, epoch: int, step: int, global_step: int,
                 losses: list[float]):
        super().__init__(message)
        self.epoch, self.step, self.global_step, self.losses = epoch, step, global_step, losses


def _as_pair(data, split: str, name: str) -> tuple[Tensor, Tensor]:
    """The (images, labels) of a pair or of a Dataset's split, checked (shapes, [0, 1], finite)."""
    if isinstance(data, Dataset):
        data = getattr(data, split)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        check_images(x, y, name=f"{name} images")
        return x, y
    raise ValueError(f"{name} must be an (images, labels) pair or a Dataset, "
                     f"got {type(data).__name__}")


def _callback_name(cb) -> str:
    # A readable, *stable* description for the config (and so the cache key): objects with their
    # own __repr__ (DropBlockSchedule) give it; plain functions give their qualified name.
    if isinstance(cb, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return cb.__qualname__
    if type(cb).__repr__ is not object.__repr__:
        return repr(cb)
    return type(cb).__qualname__


class ClassicalTraining:
    """Standard (non-robust) training of ``model`` in place; the base class of every method.

    The hyperparameters are :class:`~robust_nb.training.options.TrainOptions` (``Options``; each
    method has its own subclass): pass them as keyword arguments, or an ``options`` instance (a
    recipe's), or both (keywords replace the instance's values). They are readable as attributes
    (``trainer.lr``) and as ``trainer.options``; ``print(trainer.options)`` shows them all with
    their meaning. The remaining arguments change how training runs, not its result:

    Args:
        model: the network (its device is the training device; it is trained in place).
        options: a ``TrainOptions`` of this method (e.g. ``recipe.options``).
        checkpoint: file written atomically after every epoch (``None`` = no checkpoints).
        log_every: steps between host reads of the loss (progress bar, NaN check).
        quiet: no progress bars.
        callbacks: ``cb(epoch)`` called at the start of every epoch.
        num_classes: for mixup's one-hot targets; default from the data.
        distributed: train with DistributedDataParallel over the initialised process group
            (see the module docstring); ``None``: when one of more than one process exists.
        **hyperparameters: options by name, e.g. ``epochs=6, lr=0.05, batch_size=128``.

    ``amp=None`` (automatic) trains in bf16 on CUDA GPUs with native bf16 and on CPUs with native
    bf16 instructions (AVX512-BF16 or AMX), in fp16 with a gradient scaler on other CUDA GPUs, and
    in fp32 elsewhere (emulated bf16 is slower than fp32; see ``benchmarks/README.md``).

    >>> trainer = ClassicalTraining(model, epochs=6, lr=0.05, batch_size=128, augment="crop",
    ...                             ema_decay=0.99)
    >>> history = trainer.fit(data, val=data.test)
    >>> rnb.evaluation.accuracy(trainer.eval_model, *data.test)
    """

    Options = TrainOptions
    loss_name = "cross-entropy"            # what History calls the training loss

    @classmethod
    def passes_per_step(cls, options) -> int:
        """Forward-backward passes of a batch per optimizer step with ``options`` (a cost
        estimate for ``rnb.training.pending``): one, or three with AugMix (two more views)."""
        return 3 if options.augmix else 1

    def __init__(self, model: nn.Module, options: TrainOptions | None = None, *,
                 checkpoint: str | Path | None = None, log_every: int = 50, quiet: bool = False,
                 callbacks: Sequence[Callable[[int], None]] = (), num_classes: int | None = None,
                 distributed: bool | None = None, **hyperparameters):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if options is None:
            options = self.Options.build(**hyperparameters)
        elif type(options) is not self.Options:
            raise ValueError(f"{type(self).__name__} takes {self.Options.__name__}, got "
                             f"{type(options).__name__} (a recipe of another method?)")
        elif hyperparameters:
            options = options.replace(**hyperparameters)
        if int(log_every) != log_every or log_every < 1:
            raise ValueError(f"log_every must be a positive integer, got {log_every}")
        for cb in callbacks:
            if not callable(cb):
                raise ValueError(f"every callback must be callable as cb(epoch), got {cb!r}")

        from .. import distributed as dist

        if distributed is None:
            distributed = dist.is_distributed()
        if distributed and not dist.is_distributed():
            raise ValueError("distributed=True needs an initialised process group of more than one "
                             "process (start the script with torchrun)")
        self.rank, self.world_size = (dist.rank(), dist.world_size()) if distributed else (0, 1)
        if options.batch_size % self.world_size:
            raise ValueError(f"batch_size {options.batch_size} (the global batch) must be a "
                             f"multiple of the number of processes, {self.world_size}")

        self.options = options
        self.model = model
        self.device = model_device(model)
        self.amp_dtype = self._resolve_amp(options.amp, self.device)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.log_every, self.quiet = int(log_every), bool(quiet) or self.rank != 0
        self.callbacks = list(callbacks)
        self.num_classes = num_classes

        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # The module the training forward passes run through: DDP averages the gradients of
        # what goes through it. Everything else (attacks, EMA, evaluation, saving) uses `model`.
        self.net = dist.wrap(model) if self.world_size > 1 else model
        self.optimizer = self._build_optimizer()
        # fp16 needs loss scaling; bf16 (same exponent range as fp32) does not. A disabled scaler
        # is a pass-through, so there is one code path.
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.ema = WeightEMA(model, self.ema_decay) if self.ema_decay > 0 else None
        self.mixup_generator = torch.Generator(device=self.device)
        self.mixup_generator.manual_seed(self.seed + 1)
        # -- AugMix option (robust_nb.augmix): its own generator; only the default loss uses it
        self.augmix_generator: torch.Generator | None = None
        if self.augmix:
            overridden = [name for name in ("perturb", "training_loss")
                          if getattr(type(self), name) is not getattr(ClassicalTraining, name)]
            if overridden:
                raise ValueError(f"{type(self).__name__} defines its own {' and '.join(overridden)}; "
                                 f"augmix=True is an option of ClassicalTraining's loss only")
            self.augmix_generator = torch.Generator(device=self.device).manual_seed(self.seed + 2)
        # -- end AugMix

        self.epoch = 0           # epochs completed
        self.global_step = 0     # optimizer steps taken
        self.steps_per_epoch: int | None = None   # known once fit() has built the loader
        self.history = History(loss_name=self.loss_name)
        self.stop_reason: str | None = None
        self._loader: DeviceLoader | None = None

    def __getattr__(self, name: str):
        # Hyperparameters read as attributes: trainer.lr is trainer.options.lr.
        options = self.__dict__.get("options")
        if options is not None and name in options.names():
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _resolve_amp(amp, device: torch.device) -> torch.dtype | None:
        if amp is False:
            return None
        if amp == "bf16":
            return torch.bfloat16
        if amp == "fp16":
            return torch.float16
        # Native bf16 only: emulated bf16 (older GPUs) is slower than fp16 with a scaler.
        cuda_bf16 = (device.type == "cuda"
                     and torch.cuda.is_bf16_supported(including_emulation=False))
        if amp is True:
            return torch.float16 if device.type == "cuda" and not cuda_bf16 else torch.bfloat16
        # amp=None: automatic (see the class docstring).
        if device.type == "cuda":
            return torch.bfloat16 if cuda_bf16 else torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return None

    def _build_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if self.options.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                   nesterov=self.nesterov, weight_decay=self.weight_decay)
        cls = torch.optim.Adam if self.options.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

    def config_dict(self) -> dict:
        """JSON-able hyperparameters: the checkpoint's config and part of the cache key.

        The options (:meth:`TrainOptions.to_dict`), with ``amp`` resolved to the dtype used on
        this device, and the callbacks' names. ``checkpoint``, ``log_every`` and ``quiet`` are
        left out (they do not change the result).
        """
        amp = {None: None, torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return {**self.options.to_dict(), "amp": amp,
                "callbacks": [_callback_name(cb) for cb in self.callbacks]}

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate and save: the EMA copy when ``ema_decay > 0``, else ``model``."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ hooks
    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        """The training inputs for a batch; default: the clean batch itself."""
        return x

    def training_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, logits)`` for one batch (runs inside ``torch.autocast``)."""
        x = self.perturb(x, y)
        if self.augmix:                                                 # AugMix option
            from ..augmix import augmix_loss

            return augmix_loss(self.net, x, y, severity=self.augmix_severity,
                               width=self.augmix_width, depth=self.augmix_depth,
                               alpha=self.augmix_alpha, jsd_weight=self.augmix_jsd_weight,
                               label_smoothing=self.label_smoothing,
                               generator=self.augmix_generator)
        target = y
        if self.mixup_alpha > 0:
            from ..losses import mixup_batch

            x, target = mixup_batch(x, y, self.mixup_alpha, self.num_classes,
                                    generator=self.mixup_generator)   # target: (B, K) soft
        logits = self.net(x)                                            # (B, K)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        return loss, logits

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        """Called after each epoch's evaluation; may set ``self.stop_reason``."""

    def extra_state(self) -> dict:
        """Method-specific state to put in checkpoints (tensors and plain values)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""

    # ------------------------------------------------------------------ the loop
    def _lr_at(self, step: int, steps_per_epoch: int) -> float:
        return self.lr * lr_factor(self.schedule, step, self.epochs * steps_per_epoch,
                                   self.warmup_epochs * steps_per_epoch,
                                   milestones=tuple(m * steps_per_epoch for m in self.milestones),
                                   decay=self.lr_decay, peak=self.cycle_peak)

    def _rng_context(self):
        # Dropout/DropBlock draw from the global generator: fork it so that fit() is
        # reproducible from `seed` and leaves the caller's generator as it found it.
        if self.device.type == "cuda":
            index = self.device.index
            if index is None:
                index = torch.cuda.current_device()
            return torch.random.fork_rng(devices=[index], device_type="cuda")
        return torch.random.fork_rng(devices=[])

    def fit(self, train, val=None, resume: bool = False,
            stop_after: int | None = None) -> History:
        """Train for ``epochs`` (or what is left of them after ``resume``); return the History.

        ``train``: an ``(images, labels)`` pair or a ``Dataset`` (its ``.train``); ``val``: a pair
        or a ``Dataset`` (its ``.test``), evaluated after every epoch. ``resume=True`` continues
        from ``checkpoint`` when that file exists (else starts afresh); with the same seed on the
        same device the result is the same as an uninterrupted run. ``stop_after``: train at most
        this many epochs in this call, then return (a job with a time limit; continue later with
        ``resume=True``: the schedule is that of all ``epochs``).
        """
        if stop_after is not None and (int(stop_after) != stop_after or stop_after < 1):
            raise ValueError(f"stop_after must be a positive number of epochs, got {stop_after}")
        x_train, y_train = _as_pair(train, "train", "train")
        val_pair = _as_pair(val, "test", "val") if val is not None else None
        if resume and self.checkpoint is None:
            raise ValueError("resume=True needs checkpoint=<path> in the trainer")
        if self.epoch > 0 and not resume:
            raise ValueError(f"this trainer has already run {self.epoch} epoch(s); build a new "
                             f"one, or continue with resume=True and a checkpoint")
        if self.num_classes is None:   # for mixup's one-hot targets: the model's output width
            self.num_classes = (train.num_classes if isinstance(train, Dataset)
                                else self._output_width(x_train[:1]))
        padding = (self.crop_padding if self.crop_padding is not None
                   else 4 if x_train.shape[-1] >= 32 else 2)
        loader = DeviceLoader(x_train, y_train, self.batch_size, augment=self.augment,
                              padding=padding, seed=self.seed, device=self.device,
                              rank=self.rank, world_size=self.world_size)
        if val_pair is not None:
            val_pair = (val_pair[0].to(self.device), val_pair[1].to(self.device))
        with self._rng_context():
            torch.manual_seed(self.seed)
            if resume and self.checkpoint.exists():
                self._load_checkpoint(self.checkpoint, loader)
            until = self.epochs if stop_after is None else min(self.epochs,
                                                                self.epoch + int(stop_after))
            self._run(loader, val_pair, until)
        return self.history

    @torch.no_grad()
    def _output_width(self, x: Tensor) -> int:
        with model_mode(self.model, training=False):
            return self.model(x.to(self.device)).shape[1]

    def warmup_fraction(self, epochs: int) -> float:
        """How far the current step is into its first ``epochs`` epochs, in (0, 1] (1 after them
        and when ``epochs`` is 0): the linear ramp of eps warm-up."""
        if epochs == 0 or not self.steps_per_epoch:
            return 1.0
        return min(1.0, (self.global_step + 1) / (epochs * self.steps_per_epoch))

    @property
    def eps_scale(self) -> float:
        """For methods that attack while training: the fraction of eps (and of the attack step)
        used at this step, below 1 during the linear warm-up of ``eps_warmup_epochs`` (Gowal et
        al. 2020, https://arxiv.org/abs/2010.03593; the ramp of certified training), then 1."""
        return self.warmup_fraction(getattr(self.options, "eps_warmup_epochs", 0))

    # -- sums over the ranks (identity with one process) ------------------------------------
    def _sum(self, *values: float) -> list[float]:
        from ..distributed import sum_over_ranks

        return sum_over_ranks(*values) if self.world_size > 1 else [float(v) for v in values]

    def _shard(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """This rank's share of evaluation images (all of them with one process)."""
        from ..distributed import shard

        return shard(*tensors) if self.world_size > 1 else tensors

    def global_accuracy(self, acc: float, n: int) -> float:
        """An accuracy measured by this rank on ``n`` images, as the accuracy over every rank's
        images (the accuracy itself with one process)."""
        if self.world_size == 1:
            return acc
        correct, total = self._sum(round(acc * n), n)
        return correct / total

    def _run(self, loader: DeviceLoader, val_pair, until: int | None = None) -> None:
        from ..progress import progress

        until = self.epochs if until is None else until
        steps = self.steps_per_epoch = len(loader)
        n_train = loader.samples_per_epoch
        epoch_bar = progress(total=self.epochs, initial=self.epoch, desc=type(self).__name__,
                         unit="epoch", disable=self.quiet)
        try:
            while self.epoch < until and self.stop_reason is None:
                epoch = self.epoch
                for cb in self.callbacks:
                    cb(epoch)
                start = time.perf_counter()
                losses = torch.full((steps,), float("nan"), device=self.device)
                correct = torch.zeros((), dtype=torch.long, device=self.device)
                checked = 0
                batch_bar = progress(total=steps, desc=f"epoch {epoch + 1}", unit="batch",
                                 leave=False, disable=self.quiet)
                self.model.train()
                for i, (x, y) in enumerate(loader):
                    self._train_step(x, y, losses, correct, i, steps)
                    if (i + 1) % self.log_every == 0 or i + 1 == steps:
                        self._check_finite(losses, checked, i + 1, epoch)   # host sync
                        batch_bar.set_postfix(loss=f"{losses[i].item():.3f}", refresh=False)
                        batch_bar.update(i + 1 - checked)
                        checked = i + 1
                batch_bar.close()
                if self.world_size > 1:                    # every rank's steps, every image
                    from ..distributed import all_reduce_

                    all_reduce_(losses, average=True)
                    all_reduce_(correct)
                record = {"epoch": epoch, "loss": losses.mean().item(),
                          "acc": correct.item() / n_train,
                          "lr": self.optimizer.param_groups[0]["lr"]}
                record.update(self._evaluate(val_pair))
                record["time"] = time.perf_counter() - start
                self.on_epoch_end(epoch, record)
                self.history.records.append(record)
                self.epoch = epoch + 1
                if self.stop_reason is not None:
                    self.history.stopped = self.stop_reason
                if self.checkpoint is not None and self.rank == 0:
                    self.save_checkpoint(self.checkpoint, loader)
                epoch_bar.set_postfix({k: f"{v:.3f}" for k, v in record.items()
                                       if k in ("loss", "acc", "val_acc") and v is not None})
                epoch_bar.update(1)
        finally:
            epoch_bar.close()
        self.eval_model.eval()

    def _train_step(self, x: Tensor, y: Tensor, losses: Tensor, correct: Tensor, i: int,
                    steps: int) -> None:
        lr = self._lr_at(self.global_step, steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss, logits = self.training_loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        losses[i] = loss.detach()
        correct += (logits.detach().argmax(1) == y).sum()
        self.global_step += 1

    def _check_finite(self, losses: Tensor, start: int, stop: int, epoch: int) -> None:
        window = losses[start:stop]
        if self.world_size > 1:      # every rank sees a NaN of any rank, and stops with it
            from ..distributed import all_reduce_

            window = all_reduce_(window.clone())
        bad = ~torch.isfinite(window)
        if not bool(bad.any()):
            return
        step = start + int(bad.nonzero()[0])
        last = losses[max(0, step - 5):step + 1].tolist()
        global_step = self.global_step - (stop - step)
        if self.checkpoint is None:
            ckpt = "No checkpoint was being written (checkpoint=None)."
        elif self.checkpoint.exists():
            ckpt = (f"The last good checkpoint ({self.checkpoint}, {self.epoch} epoch(s)) is "
                    f"intact; resume from it after changing a setting.")
        else:
            ckpt = f"No checkpoint was written yet ({self.checkpoint}): start afresh."
        raise TrainingDiverged(
            f"training diverged: the loss became {last[-1]} at epoch {epoch} (0-based), step "
            f"{step} of {len(losses)} (global step {global_step}, lr "
            f"{self._lr_at(global_step, len(losses)):.4g}); last losses "
            f"[{', '.join(f'{v:.4g}' for v in last)}]. Try a smaller "
            f"learning rate (lr={self.lr:g} now), a warm-up (warmup_epochs=1), gradient clipping "
            f"(grad_clip=1.0), or amp=False. {ckpt}",
            epoch=epoch, step=step, global_step=global_step, losses=last)

    @torch.no_grad()
    def _evaluate(self, val_pair) -> dict:
        if val_pair is None:
            return {"val_loss": None, "val_acc": None}
        n = len(val_pair[1])
        x, y = self._shard(*val_pair)                                  # this rank's share

        def measure(model):
            logits = predict_logits(model, x, self.eval_batch_size)   # (n_rank, K), eval mode
            loss, correct = self._sum(F.cross_entropy(logits, y, reduction="sum").item(),
                                      (logits.argmax(1) == y).sum().item())
            return loss / n, correct / n

        out = dict(zip(("val_loss", "val_acc"), measure(self.eval_model)))
        if self.ema is not None:
            out.update(zip(("val_loss_raw", "val_acc_raw"), measure(self.model)))
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, loader: DeviceLoader | None = None) -> dict:
        """Everything needed to continue training exactly (tensors and plain values only)."""
        rng = {"torch": torch.get_rng_state(), "mixup": self.mixup_generator.get_state(),
               "loader": loader.state_dict()["generator"] if loader is not None else None,
               "augmix": (self.augmix_generator.get_state()                    # AugMix option
                          if self.augmix_generator is not None else None),
               "cuda": (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
                        else None)}
        return {
            "format": CHECKPOINT_FORMAT, "method": type(self).__name__,
            "config": self.config_dict(), "epoch": self.epoch, "global_step": self.global_step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": rng, "history": self.history.to_dict(), "stop_reason": self.stop_reason,
            "extra": self.extra_state(),
        }

    def save_checkpoint(self, path: str | Path, loader: DeviceLoader | None = None) -> Path:
        """Write :meth:`state_dict` atomically to ``path``."""
        return atomic_save(self.state_dict(loader), path)

    def _load_checkpoint(self, path: Path, loader: DeviceLoader | None) -> None:
        state = safe_load(path, CHECKPOINT_FORMAT, map_location=self.device)
        if state["method"] != type(self).__name__:
            raise CheckpointError(f"{path} was written by {state['method']}, not "
                                  f"{type(self).__name__}")
        ours = self.config_dict()
        diff = sorted(k for k in set(ours) | set(state["config"])
                      if ours.get(k) != state["config"].get(k))
        if diff:
            detail = ", ".join(f"{k}: {state['config'].get(k)!r} in the file vs {ours.get(k)!r}"
                               for k in diff)
            raise CheckpointError(f"{path} was written with different settings ({detail}); "
                                  f"use the same settings to resume, or another checkpoint path")
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        except RuntimeError as err:
            raise CheckpointError(f"{path} holds weights of another architecture: "
                                  f"{str(err)[:300]}") from err
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.history = History.from_dict(state["history"])
        self.stop_reason = state["stop_reason"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        self.mixup_generator.set_state(rng["mixup"].cpu())
        if self.augmix_generator is not None and rng.get("augmix") is not None:   # AugMix option
            self.augmix_generator.set_state(rng["augmix"].cpu())
        if loader is not None and rng["loader"] is not None:
            loader.load_state_dict({"generator": rng["loader"].cpu()})
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        self.load_extra_state(state["extra"])

    def load_checkpoint(self, path: str | Path) -> None:
        """Load weights, EMA, optimizer, counters and history from a checkpoint (no data state)."""
        self._load_checkpoint(Path(path), None)

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config_dict().items())
        return f"{type(self).__name__}({cfg})"
