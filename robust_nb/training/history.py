"""`History`: what a training run did, one record per epoch, JSON-serialisable and plottable."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

COLUMNS = ("epoch", "loss", "acc", "val_loss", "val_acc", "lr", "time")


@dataclass
class History:
    """Per-epoch records of a training run.

    Each record is a dict with at least ``epoch`` (0-based), ``loss`` and ``acc`` (training,
    averaged over the epoch's batches, on the augmented / perturbed batches actually trained
    on), ``val_loss`` and ``val_acc`` (of the evaluation model, ``None`` without validation
    data), ``lr`` (at the end of the epoch) and ``time`` (seconds). Methods may add keys
    (e.g. ``val_acc_raw`` for the raw weights when EMA is on). ``stopped`` holds the reason
    when a method stopped training early, else ``None``. ``loss_name`` says what the training
    ``loss`` is (the method's objective; ``val_loss`` is always the clean cross-entropy).
    """

    records: list[dict] = field(default_factory=list)
    stopped: str | None = None
    loss_name: str = "cross-entropy"

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: str) -> list:
        """The column ``key`` over epochs: ``history["val_acc"]``."""
        if not self.records or key not in self.records[0]:
            known = ", ".join(self.records[0]) if self.records else "(no records yet)"
            raise KeyError(f"no column {key!r}; columns: {known}")
        return [r.get(key) for r in self.records]

    @property
    def last(self) -> dict:
        if not self.records:
            raise IndexError("the history is empty: no epoch has finished")
        return self.records[-1]

    def to_dict(self) -> dict:
        return {"records": [dict(r) for r in self.records], "stopped": self.stopped,
                "loss_name": self.loss_name}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        if not isinstance(d, dict) or "records" not in d:
            raise ValueError("not a History dict: expected a dict with 'records'")
        return cls(records=[dict(r) for r in d["records"]], stopped=d.get("stopped"),
                   loss_name=d.get("loss_name", "cross-entropy"))

    def plot(self, title: str | None = None, axes=None, n_val: int | None = None):
        """Learning curves: loss and accuracy (train and validation) per epoch, and the lr.

        The training loss is labelled with ``loss_name`` (the trainer's objective, e.g. TRADES'
        "CE + beta KL"); the validation loss is the clean cross-entropy. With ``n_val`` (the
        number of validation images) the validation accuracies get their 95% Wilson intervals
        as error bars. Returns the matplotlib figure.
        """
        import matplotlib.pyplot as plt

        if not self.records:
            raise ValueError("nothing to plot: the history is empty")
        if axes is None:
            fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        else:
            fig = axes[0].figure
        epochs = [r["epoch"] + 1 for r in self.records]

        def curve(ax, key, label, n=None, **kw):
            ys = [r.get(key) for r in self.records]
            pts = [(e, y) for e, y in zip(epochs, ys) if y is not None and math.isfinite(y)]
            if pts and n is not None:                  # accuracies on n images: 95% intervals
                from ..plots import wilson_errors

                xs, vs = zip(*pts)
                ax.errorbar(xs, vs, yerr=wilson_errors(vs, n), marker="o", ms=3, capsize=2,
                            label=f"{label} (95% CI, n={n})", **kw)
            elif pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label, **kw)

        curve(axes[0], "loss", f"train: {self.loss_name}")
        curve(axes[0], "val_loss", "validation: cross-entropy")
        axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
        curve(axes[1], "acc", "train (running, on the batches trained on)")
        curve(axes[1], "val_acc", "validation", n=n_val)
        if "val_acc_raw" in self.records[0]:
            curve(axes[1], "val_acc_raw", "validation (raw weights)", n=n_val, ls="--")
        axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy")
        curve(axes[2], "lr", "lr", color="gray")
        axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate (end of epoch)")
        for ax in axes[:2]:
            ax.legend(fontsize=8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig
