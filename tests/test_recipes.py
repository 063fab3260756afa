"""The recipes: full-profile numbers checked against the authors' code (read side by side; the
file and line each number comes from is named in the recipe's source), quick recipes buildable,
and every recipe printable with its source and deviations."""

import dataclasses

import pytest
import torch

import robust_nb as rnb
from robust_nb.training import METHODS, recipe


@pytest.fixture(scope="module")
def full():
    return rnb.setup("full", verbose=False)


@pytest.fixture(scope="module")
def quick():
    return rnb.setup("quick", verbose=False)


def test_trades_is_the_official_train_trades_cifar10(full):
    r = recipe(full, "trades")
    o = r.options
    assert r.trainer is rnb.training.TradesTraining and r.model == "wrn_34_10"
    assert (o.epochs, o.lr, o.momentum, o.weight_decay, o.batch_size) == (76, 0.1, 0.9, 2e-4, 128)
    assert (o.eps, o.alpha, o.steps, o.beta) == (0.031, 0.007, 10, 6.0)
    assert (o.schedule, o.milestones, o.lr_decay, o.nesterov) == ("piecewise", (74,), 0.1, False)
    assert o.ema_decay == 0 and (o.augment, o.crop_padding) == ("crop+flip", 4)
    # adjust_learning_rate: lr * 0.1 from (1-based) epoch 75, i.e. the last two epochs
    lrs = [o.lr * rnb.training.lr_factor("piecewise", e, o.epochs,
                                         milestones=o.milestones, decay=o.lr_decay)
           for e in range(o.epochs)]
    assert lrs[:74] == [0.1] * 74 and lrs[74:] == pytest.approx([0.01, 0.01])


def test_fire_is_the_authors_cifar10_config(full):
    o = recipe(full, "fire").options
    assert (o.epochs, o.batch_size, o.lr, o.momentum, o.nesterov, o.weight_decay) == \
        (100, 256, 0.1, 0.9, True, 5e-4)
    assert (o.eps, o.alpha, o.steps, o.beta) == (0.031, 0.007, 10, 20.0)
    # 'trades_fixed': x0.1 from (1-based) epochs 75, 90 and 100 (= 0.75, 0.9, 1.0 of 100)
    assert o.milestones == (74, 89, 99) and o.ema_decay == 0
    assert recipe(full, "fire").model == "wrn_34_10"
    assert any("1e-12" in d for d in recipe(full, "fire").deviations)


def test_fgsm_rs_is_wong_et_al_train_fgsm(full):
    r = recipe(full, "fgsm")
    o = r.options
    assert r.model == "preact_resnet18" and r.trainer is rnb.training.FastAdversarialTraining
    assert (o.epochs, o.lr, o.batch_size, o.weight_decay, o.momentum) == (15, 0.2, 128, 5e-4, 0.9)
    assert (o.schedule, o.cycle_peak) == ("onecycle", 0.5)     # CyclicLR, up = down = half
    assert o.eps == 8 / 255 and o.alpha == 10 / 255 and o.random_start and o.bn_mode == "train"
    # torch's CyclicLR(base 0, max 0.2, step_size_up = step_size_down = total / 2), per step
    total = 20
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, 0.0, 0.2, step_size_up=total // 2,
                                              step_size_down=total // 2, cycle_momentum=False)
    ref = []
    for _ in range(total):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [0.2 * rnb.training.lr_factor("onecycle", s, total, peak=o.cycle_peak)
            for s in range(total)]
    assert ours == pytest.approx(ref)


def test_pgd_at_is_rice_et_al_with_best_checkpoint(full):
    r = recipe(full, "pgd")
    o = r.options
    assert r.model == "preact_resnet18" and r.holdout == 1000
    assert (o.epochs, o.lr, o.batch_size, o.weight_decay, o.schedule, o.milestones) == \
        (200, 0.1, 128, 5e-4, "piecewise", ())
    assert (o.eps, o.alpha, o.steps, o.bn_mode) == (8 / 255, 2 / 255, 10, "train")
    assert o.select_best and o.robust_val == 1000 and o.robust_val_steps == 10
    lrs = [rnb.training.lr_factor("piecewise", e, 200) for e in (99, 100, 149, 150)]
    assert lrs == pytest.approx([1, 0.1, 0.1, 0.01])


def test_no_full_recipe_uses_ema_and_every_recipe_prints_its_source(full, quick):
    for cfg in (full, quick):
        for method in METHODS:
            r = recipe(cfg, method)
            text = " ".join(str(r).split())                 # the printout wraps long lines
            assert " ".join(r.source.split()) in text and "deviations" in text
            assert all(" ".join(d.split()) in text for d in r.deviations)
            assert type(r.options) is r.trainer.Options
            if cfg.profile == "full":
                assert r.options.ema_decay == 0, method
    assert "not a paper" in recipe(full, "autoattack").source


def test_quick_recipes_use_the_profile_threat_model(quick):
    for method in ("pgd", "fgsm", "autoattack", "trades", "fire"):
        assert recipe(quick, method).options.eps == quick.eps_linf
    assert recipe(quick, "fgsm").options.alpha == pytest.approx(1.25 * quick.eps_linf)
    assert recipe(quick, "mixup").options.mixup_alpha == 1.0
    with pytest.raises(ValueError, match="known methods"):
        recipe(quick, "sgd-please")


def test_recipe_replace_checks_the_new_options(quick):
    r = recipe(quick, "trades")
    assert r.replace(beta=1.0).options.beta == 1.0 and r.options.beta == 6.0
    with pytest.raises(ValueError, match="mixup_alpha"):
        r.replace(mixup_alpha=0.2)
    with pytest.raises(ValueError, match="no option"):
        r.replace(epsilon=0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.options.beta = 2.0


def test_holdout_split_is_disjoint_and_seeded(mnist):
    from robust_nb.training.recipes import holdout_split

    (xt, yt), (xv, yv) = holdout_split(mnist, 100, seed=0)
    assert len(yv) == 100 and len(yt) == len(mnist.train[1]) - 100
    again = holdout_split(mnist, 100, seed=0)[1]
    assert torch.equal(again[0], xv)
    flat = {tuple(v.flatten()[::7].tolist()) for v in xv}
    assert not any(tuple(v.flatten()[::7].tolist()) in flat for v in xt[:500])
    with pytest.raises(ValueError, match="hold out"):
        holdout_split(mnist, 0, seed=0)


def test_pending_names_what_train_method_would_train(quick, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ROBUST_NB_CACHE", str(tmp_path))
    data = rnb.data.load_dataset("mnist-5k")
    small = ("classical", {"epochs": 1, "batch_size": 500})
    jobs = [small, ("trades", {"epochs": 2, "beta": 0.0, "batch_size": 500}), small]   # one twice
    assert rnb.training.pending(quick, data, jobs) == [
        "'classical' with epochs=1, batch_size=500", "'trades' with epochs=2, beta=0.0, batch_size=500"]
    assert "2 of 2 models are not in the cache" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())                          # nothing was trained or written
    rnb.training.train_method(quick, data, "classical", quiet=True, **small[1])
    assert rnb.training.pending(quick, data, jobs, verbose=False) == [
        "'trades' with epochs=2, beta=0.0, batch_size=500"]
    assert rnb.training.pending(quick, data, [small, small]) == []
    assert "every model needed here (1) is in the cache" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown training method"):
        rnb.training.pending(quick, data, ["adversarial"])
