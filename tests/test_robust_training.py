"""PGD adversarial training, fast FGSM training (with its overfitting guard) and APGD training.

The tests prove that each method really trains on adversarial inputs (a spy on the attack; the
training loss above the clean loss on the same batch), that short training makes every method
more robust than classical training, and that the catastrophic-overfitting guard fires on a run
set up to overfit (and restores the last good weights).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robust_nb as rnb
from robust_nb.training import (
    AdversarialTraining,
    AutoAttackTraining,
    ClassicalTraining,
    FastAdversarialTraining,
)

EPS = 0.1            # the quick profile's eps_linf
FILTERS = (8, 16, 32, 64)
COMMON = dict(lr=0.05, batch_size=64, augment="none", ema_decay=0.0, quiet=True, seed=0)
METHODS = {
    "pgd": (AdversarialTraining, dict(eps=EPS, alpha=0.025, steps=5), "pgd"),
    "fgsm": (FastAdversarialTraining, dict(eps=EPS), "fgsm"),
    "autoattack": (AutoAttackTraining, dict(eps=EPS, steps=5), "apgd"),
}


def strided(pair, n):
    """n evenly spaced samples (the embedded splits are sorted by class)."""
    x, y = pair
    idx = torch.arange(n) * len(x) // n
    return x[idx], y[idx]


def convnet(data, seed=0):
    torch.manual_seed(seed)
    return rnb.models.build_model("convnet", 10, 1, filters=FILTERS, batchnorm=True,
                                  mean=data.mean, std=data.std)


@pytest.fixture(scope="module")
def small(mnist):
    return strided(mnist.train, 1280), strided(mnist.test, 200)


@pytest.fixture(scope="module")
def classical(mnist, small):
    """A classically trained ConvNet: the baseline, and a model with a meaningful loss surface."""
    train, _ = small
    model = convnet(mnist)
    ClassicalTraining(model, epochs=2, schedule="onecycle", **COMMON).fit(train)
    return model.eval()


def pgd_accuracy(model, x, y):
    return rnb.evaluation.robust_accuracy(model, x, y, "pgd", eps=EPS, alpha=EPS / 4, steps=10,
                                          seed=1)


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize("cls, kwargs, match", [
    (AdversarialTraining, dict(eps=-0.1), "eps"),
    (AdversarialTraining, dict(eps=0.1, norm="l1"), "norm"),
    (AdversarialTraining, dict(eps=0.1, bn_mode="frozen"), "bn_mode"),
    (AdversarialTraining, dict(eps=0.1, steps=0), "steps"),
    (AdversarialTraining, dict(eps=0.1, alpha=float("nan")), "alpha"),
    (AdversarialTraining, dict(eps=0.1, robust_val=-1), "robust_val"),
    (FastAdversarialTraining, dict(eps=0.1, norm="l2"), "L-inf"),
    (FastAdversarialTraining, dict(eps=0.1, guard_drop=0.0), "guard_drop"),
    (AutoAttackTraining, dict(eps=0.1, losses=("ce", "kl")), "losses"),
    (AutoAttackTraining, dict(eps=0.1, losses=()), "losses"),
])
def test_bad_arguments_raise(mnist, cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(convnet(mnist), epochs=1, **COMMON, **kwargs)


def test_defaults_follow_the_papers(mnist):
    pgd_at = AdversarialTraining(convnet(mnist), epochs=1, eps=0.1, steps=5, **COMMON)
    assert pgd_at.alpha == pytest.approx(2.5 * 0.1 / 5) and pgd_at.bn_mode == "eval"
    fast = FastAdversarialTraining(convnet(mnist), epochs=1, eps=0.1, **COMMON)
    assert fast.alpha == pytest.approx(1.25 * 0.1)              # Wong et al.: 1.25 eps
    assert fast.schedule == "onecycle" and fast.random_start and fast.guard
    assert fast.config_dict()["alpha"] == pytest.approx(0.125)  # part of the cache key


# ------------------------------------------------------------------ really adversarial
@pytest.mark.parametrize("name", sorted(METHODS))
def test_training_uses_the_attack_and_a_higher_loss(name, mnist, small, classical, monkeypatch):
    cls, kwargs, attack_name = METHODS[name]
    real_attack = getattr(rnb.attacks, attack_name)
    calls = []

    def spy(model, x, y, **kw):
        calls.append((x.shape, kw["eps"]))
        return real_attack(model, x, y, **kw)

    monkeypatch.setattr(rnb.attacks, attack_name, spy)
    model = convnet(mnist)
    model.load_state_dict(classical.state_dict())
    trainer = cls(model, epochs=1, **{**COMMON, "lr": 1e-3}, **kwargs)
    (x, y), _ = small
    x, y = x[:64], y[:64]

    model.train()
    x_adv = trainer.perturb(x, y)
    assert len(calls) == 1 and calls[0] == (x.shape, EPS)
    assert model.training, "the model must be back in train mode"
    assert all(p.grad is None for p in model.parameters()), "crafting must not write .grad"
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2

    # The loss the loop minimises is larger than the clean loss on the same batch.
    torch.manual_seed(0)
    loss, logits = trainer.training_loss(x, y)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
    assert len(calls) == 2
    assert loss.item() > clean.item() + 0.1, (loss.item(), clean.item())

    # fit() calls the attack once per batch (plus the guard's PGD for FGSM, not counted here).
    calls.clear()
    trainer.fit(strided(small[0], 192))
    assert len(calls) == 3


def test_bn_mode_train_uses_batch_statistics_and_keeps_running_ones(mnist, small, classical):
    model = convnet(mnist)
    model.load_state_dict(classical.state_dict())
    trainer = AdversarialTraining(model, epochs=1, eps=EPS, alpha=0.025, steps=3,
                                  bn_mode="train", **COMMON)
    (x, y), _ = small
    buffers = {k: v.clone() for k, v in model.state_dict().items()
               if "running" in k or "batches" in k}
    model.train()
    with trainer.crafting_model() as view:
        with rnb.attacks.attack_mode(view), torch.no_grad():
            out = view(x[:64])
        expected = model(x[:64])         # train mode, batch statistics, stats frozen here too
    assert model.training
    torch.testing.assert_close(out, expected)
    x_adv = trainer.perturb(x[:64], y[:64])
    assert (x_adv - x[:64]).abs().max() <= EPS + 1e-6
    for k, v in model.state_dict().items():
        if k in buffers:
            torch.testing.assert_close(v, buffers[k], msg=f"{k} changed while crafting")


def test_autoattack_training_with_dlr_keeps_the_higher_loss(mnist, small, classical):
    model = convnet(mnist)
    model.load_state_dict(classical.state_dict())
    (x, y), _ = small
    x, y = x[:64], y[:64]
    both = AutoAttackTraining(model, epochs=1, eps=EPS, steps=5, losses=("ce", "dlr"), **COMMON)
    model.eval()
    x_both = both.craft(model, x, y)
    seed = both.attack_seed()
    x_ce = rnb.attacks.apgd(model, x, y, eps=EPS, steps=5, loss="ce", seed=seed)
    x_dlr = rnb.attacks.apgd(model, x, y, eps=EPS, steps=5, loss="dlr", seed=seed + 1)
    with torch.no_grad():
        ce = lambda z: F.cross_entropy(model(z), y, reduction="none")   # noqa: E731
        expected = torch.maximum(ce(x_ce), ce(x_dlr))
        torch.testing.assert_close(ce(x_both), expected)


# ------------------------------------------------------------------ robustness
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_beats_classical_training_on_pgd_accuracy(name, mnist, small, classical):
    cls, kwargs, _ = METHODS[name]
    (x_train, y_train), (x_test, y_test) = small
    model = convnet(mnist)
    history = cls(model, epochs=3, **{**COMMON, "schedule": "onecycle"}, robust_val=50,
                  **kwargs).fit((x_train, y_train), val=(x_test, y_test))
    base = pgd_accuracy(classical, x_test, y_test)
    robust = pgd_accuracy(model.eval(), x_test, y_test)
    assert rnb.evaluation.accuracy(model, x_test, y_test) > 0.6
    print(name, robust, base)
    assert robust > base + 0.2, (name, robust, base)
    assert 0 <= history.records[-1]["val_robust_acc"] <= 1
    assert history.stopped is None


# ------------------------------------------------------------------ the overfitting guard
class Collapse:
    """A callback that wrecks the model at the start of one epoch: the sign of the classifier
    flips, so the next guard check sees PGD accuracy fall to ~0 (a collapse set up on purpose,
    deterministic, unlike real catastrophic overfitting which needs long runs)."""

    def __init__(self, model, epoch):
        self.model, self.epoch = model, epoch

    def __call__(self, epoch):
        if epoch == self.epoch:
            with torch.no_grad():
                self.model.head.weight.neg_()
                self.model.head.bias.neg_()


def test_guard_fires_on_a_run_set_up_to_collapse_and_rolls_back(mnist, small, classical):
    (x_train, y_train), _ = small
    model = convnet(mnist)
    model.load_state_dict(classical.state_dict())
    saved = {}

    def remember(epoch):       # runs before Collapse: the weights at the end of epoch `epoch - 1`
        saved[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    trainer = FastAdversarialTraining(model, epochs=4, eps=EPS, **{**COMMON, "lr": 1e-3},
                                      schedule="constant", callbacks=[remember, Collapse(model, 2)])
    with pytest.warns(RuntimeWarning, match="catastrophic overfitting"):
        history = trainer.fit(strided((x_train, y_train), 640))
    acc = history["guard_pgd_acc"]
    fgsm_acc = history["guard_fgsm_acc"]             # the training attack, on the same batch
    assert len(fgsm_acc) == len(acc) and all(0 <= a <= 1 for a in fgsm_acc)
    assert all(f >= p for f, p in zip(fgsm_acc[:2], acc[:2])), (fgsm_acc, acc)   # one step < five
    assert len(history.records) == 3, "training must stop after the collapsed epoch"
    assert acc[2] < acc[1] - 0.2
    assert history.records[2]["rolled_back_to"] == 1
    assert "epoch 3" in history.stopped and "epoch 2" in history.stopped
    # The weights are those of the last good epoch (index 1) again.
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[2][k], msg=k)


def test_guard_can_be_disabled(mnist, small, classical):
    (x_train, y_train), _ = small
    model = convnet(mnist)
    model.load_state_dict(classical.state_dict())
    trainer = FastAdversarialTraining(model, epochs=2, eps=EPS, guard=False, **COMMON,
                                      callbacks=[Collapse(model, 1)])
    history = trainer.fit(strided((x_train, y_train), 256))
    assert history.stopped is None
    assert "guard_pgd_acc" not in history.records[-1] and "guard_fgsm_acc" not in history.records[-1]


def test_guard_state_survives_a_checkpoint(mnist, small, classical, tmp_path):
    (x_train, y_train), _ = small
    train = strided((x_train, y_train), 128)
    first = FastAdversarialTraining(convnet(mnist), epochs=2, eps=EPS, checkpoint=tmp_path / "c.pt",
                                    **COMMON)
    first.fit(train)
    resumed = FastAdversarialTraining(convnet(mnist, seed=1), epochs=2, eps=EPS,
                                      checkpoint=tmp_path / "c.pt", **COMMON)
    resumed.load_checkpoint(tmp_path / "c.pt")
    assert resumed._guard_prev == first._guard_prev and resumed._best_epoch == first._best_epoch
    for k, v in first._best_state["model"].items():
        torch.testing.assert_close(resumed._best_state["model"][k], v)


def test_select_best_ends_with_the_epoch_of_best_validation_robustness(mnist, small):
    train, test = small
    states = []

    class Spy(AdversarialTraining):
        def on_epoch_end(self, epoch, record):
            states.append({k: v.clone() for k, v in self.eval_model.state_dict().items()})
            super().on_epoch_end(epoch, record)

    trainer = Spy(convnet(mnist), epochs=3, eps=EPS, steps=2, robust_val=60, select_best=True,
                  **COMMON)
    history = trainer.fit((train[0][:384], train[1][:384]), val=test)
    accs = history["val_robust_acc"]
    best = max(range(3), key=lambda i: (accs[i], -i))          # the first epoch of the best
    assert history.records[-1]["selected_epoch"] == best
    final = trainer.eval_model.state_dict()
    assert all(torch.equal(final[k], states[best][k]) for k in final)
    with pytest.raises(ValueError, match="select_best"):
        AdversarialTraining(convnet(mnist), epochs=1, eps=EPS, select_best=True, **COMMON)


@pytest.mark.parametrize("cls, attack, kw", [
    (AdversarialTraining, "pgd", dict(steps=2)),
    (rnb.training.TradesTraining, "trades_kl", dict(steps=2, alpha=0.025)),
])
def test_eps_warmup_ramps_eps_and_step_linearly(mnist, small, monkeypatch, cls, attack, kw):
    seen = []
    real = getattr(rnb.attacks, attack)

    def spy(*args, **kwargs):
        seen.append((kwargs["eps"], kwargs["alpha"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(rnb.attacks, attack, spy)
    train = (small[0][0][:256], small[0][1][:256])              # 4 steps of 64 per epoch
    trainer = cls(convnet(mnist), epochs=2, eps=EPS, eps_warmup_epochs=1, **kw, **COMMON)
    trainer.fit(train)
    alpha = trainer.alpha
    assert [e for e, _ in seen] == pytest.approx([EPS * k / 4 for k in (1, 2, 3, 4)] + [EPS] * 4)
    assert [a for _, a in seen] == pytest.approx([alpha * k / 4 for k in (1, 2, 3, 4)] + [alpha] * 4)
    with pytest.raises(ValueError, match="eps_warmup_epochs"):
        cls(convnet(mnist), epochs=2, eps=EPS, eps_warmup_epochs=3, **kw, **COMMON)
