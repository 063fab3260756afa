"""TRADES and FIRE trainers: they really train on adversarial inputs crafted as the authors do,
leave the model's mode and gradients to the loop, and beat classical training on PGD accuracy."""

import pytest
import torch
import torch.nn.functional as F

import robust_nb as rnb
from robust_nb.losses import fire_loss, trades_loss
from robust_nb.training import TradesTraining
from robust_nb.training.fire import FireTraining

EPS, STEPS = 0.1, 3
ALPHA = 2.5 * EPS / STEPS


def _model(mnist, seed=0):
    torch.manual_seed(seed)
    return rnb.models.build_model("convnet", 10, 1, filters=(8, 16, 16, 32), batchnorm=True,
                                  mean=mnist.mean, std=mnist.std)


def _subset(pair, n, seed=0):
    # A seeded random subset (independent of how the split is ordered).
    idx = torch.randperm(len(pair[1]), generator=torch.Generator().manual_seed(seed))[:n]
    return pair[0][idx], pair[1][idx]


def _trainer(cls, model, **kw):
    kw = dict(dict(epochs=1, lr=0.05, batch_size=64, eps=EPS, alpha=ALPHA, steps=STEPS,
                   quiet=True), **kw)
    return cls(model, **kw)


# -- the inner maximisation, step for step against the reference loops ----------------------------

@pytest.mark.parametrize("cls", [TradesTraining, FireTraining])
def test_trainer_trains_on_adversarial_inputs(mnist, cls):
    model = _model(mnist)
    x, y = _subset(mnist.train, 128)
    calls = []   # (training?, input) of every forward pass
    handle = model.register_forward_pre_hook(lambda m, inp: calls.append((m.training, inp[0].detach())))
    trainer = _trainer(cls, model, batch_size=128)
    trainer.fit((x, y))
    handle.remove()
    # (The loop may also run the model in eval mode on a single image, to size its outputs.)
    crafting = [inp for train, inp in calls if not train and len(inp) == len(x)]
    training = [inp for train, inp in calls if train]
    # One batch: 1 clean + STEPS attack forwards in eval mode, then the clean and the
    # adversarial batch in train mode (the per-epoch evaluation here has no val set).
    assert len(crafting) == STEPS + 1 and len(training) == 2
    clean, adv = training
    assert torch.equal(crafting[0], clean)                     # same (augmented) batch
    gap = (adv - clean).abs().flatten(1).amax(1)               # (B,) L-inf distances
    assert (gap <= EPS + 1e-6).all() and gap.min().item() > 0.5 * EPS
    assert trainer.history.records[0]["loss"] > 0


@pytest.mark.parametrize("cls", [TradesTraining, FireTraining])
def test_training_loss_is_above_the_clean_loss_and_leaves_grads_alone(mnist, cls):
    model = _model(mnist)
    x, y = _subset(mnist.train, 64)
    trainer = _trainer(cls, model)
    model.train()
    loss, logits = trainer.training_loss(x, y)
    assert model.training
    assert all(p.grad is None for p in model.parameters())      # crafting wrote no .grad
    clean_ce = F.cross_entropy(logits, y)
    assert torch.equal(logits, model(x))                       # the clean logits are returned
    assert loss.item() > clean_ce.item() + 1e-4                # the regulariser is active
    # The attack found a larger divergence than the random start alone.
    objective = trades_loss if cls is TradesTraining else fire_loss
    x_adv = trainer.perturb(x, y)
    x_noise = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        at_adv = objective(model(x), model(x_adv), y, trainer.beta)
        at_noise = objective(model(x), model(x_noise), y, trainer.beta)
    assert at_adv.item() > at_noise.item() + 1e-3


def test_beta_zero_is_plain_cross_entropy_without_an_attack(mnist, monkeypatch):
    model = _model(mnist)
    x, y = _subset(mnist.train, 64)
    trainer = _trainer(TradesTraining, model, beta=0.0)
    monkeypatch.setattr(trainer, "perturb", lambda *a: pytest.fail("no attack at beta = 0"))
    model.train()
    loss, logits = trainer.training_loss(x, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))


def test_config_dict_and_bad_arguments(mnist):
    t = _trainer(FireTraining, _model(mnist), beta=12.0)
    d = t.config_dict()
    assert (d["eps"], d["alpha"], d["steps"], d["beta"], d["stability"]) == (EPS, ALPHA, STEPS, 12.0, 1e-6)
    assert TradesTraining(_model(mnist), epochs=1, lr=0.1, batch_size=8).beta == 6.0
    for bad in (dict(beta=-1.0), dict(eps=-0.1), dict(steps=-1), dict(steps=1.5),
                dict(mixup_alpha=1.0), dict(label_smoothing=0.1)):
        with pytest.raises(ValueError):
            _trainer(TradesTraining, _model(mnist), **bad)
    with pytest.raises(ValueError, match="stability"):
        _trainer(FireTraining, _model(mnist), stability=0.0)


def test_recipes_read_the_profile():
    cfg = rnb.setup("quick", verbose=False)
    for name, cls, beta in (("trades", TradesTraining, 6.0), ("fire", FireTraining, 20.0)):
        r = rnb.training.recipe(cfg, name)
        assert r.trainer is cls
        o = r.options
        assert (o.eps, o.alpha, o.beta) == (cfg.eps_linf, cfg.alpha_linf, beta)


# -- short training: robust methods beat classical training on PGD accuracy ----------------------

def test_short_training_beats_classical_on_pgd_accuracy(mnist):
    train, test = _subset(mnist.train, 1000), _subset(mnist.test, 200)

    def pgd_accuracy(cls, **kw):
        model = _model(mnist)
        kw = dict(epochs=4, lr=0.05, batch_size=64, quiet=True, **kw)
        cls(model, **kw).fit(train)
        return rnb.evaluation.robust_accuracy(model, *test, "pgd", eps=EPS, alpha=EPS / 4, steps=10)

    classical = pgd_accuracy(rnb.training.ClassicalTraining)
    trades = pgd_accuracy(TradesTraining, eps=EPS, alpha=ALPHA, steps=STEPS, beta=6.0)
    fire = pgd_accuracy(FireTraining, eps=EPS, alpha=ALPHA, steps=STEPS, beta=20.0)
    assert trades > classical + 0.15, (classical, trades)
    assert fire > classical + 0.15, (classical, fire)
