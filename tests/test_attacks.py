"""Attacks: the contract (for every attack), reproducibility, input checks, and cross-checks against
torchattacks.

The trained model (conftest.py's ``trained_convnet``) is a small convnet with BatchNorm, so a
forgotten train/eval switch would change its running statistics.
"""

import copy

import pytest
import torch
from torch import nn

from robust_nb.attacks import (
    apgd,
    attack_mode,
    autoattack,
    batchnorm_as_affine,
    dlr_loss,
    dlr_targeted_loss,
    fab,
    fgsm,
    fisher_rao,
    lp_norm,
    margin,
    pgd,
    run_autoattack,
    square,
    trades_kl,
)
from robust_nb.evaluation import accuracy
from robust_nb.stats import format_accuracy

EPS = 0.1                     # L-inf, pixel units
EPS_L2 = 1.5


@pytest.fixture(scope="module")
def trained(trained_convnet):
    return trained_convnet


@pytest.fixture(scope="module")
def batch(trained):
    model, x, y = trained
    return x[:64], y[:64]


# Every attack of the package, at settings small enough for a unit test: name -> (norm, call).
ATTACKS = {
    "fgsm": ("linf", lambda m, x, y, s: fgsm(m, x, y, EPS, seed=s)),
    "fgsm-rs": ("linf", lambda m, x, y, s: fgsm(m, x, y, EPS, random_start=True, alpha=1.25 * EPS, seed=s)),
    "pgd": ("linf", lambda m, x, y, s: pgd(m, x, y, EPS, 0.025, 5, seed=s)),
    "pgd-l2-restarts": ("l2", lambda m, x, y, s: pgd(m, x, y, EPS_L2, 0.4, 5, norm="l2", restarts=2, seed=s,
                                                     batch_size=40)),
    "pgd-dlr-targeted": ("linf", lambda m, x, y, s: pgd(m, x, y, EPS, 0.025, 5, loss="dlr", targeted=True,
                                                        target=(y + 1) % 10, seed=s)),
    "apgd-ce": ("linf", lambda m, x, y, s: apgd(m, x, y, EPS, steps=10, seed=s)),
    "apgd-dlr-l2": ("l2", lambda m, x, y, s: apgd(m, x, y, EPS_L2, norm="l2", steps=10, loss="dlr",
                                                  restarts=2, seed=s)),
    "apgd-t": ("linf", lambda m, x, y, s: apgd(m, x, y, EPS, steps=10, loss="dlr", targeted=True,
                                               n_target_classes=3, seed=s, batch_size=40)),
    "fab-t": ("linf", lambda m, x, y, s: fab(m, x, y, EPS, steps=10, n_target_classes=2, seed=s)),
    "fab-l2": ("l2", lambda m, x, y, s: fab(m, x, y, EPS_L2, norm="l2", targeted=False, steps=10, seed=s)),
    "square": ("linf", lambda m, x, y, s: square(m, x, y, EPS, queries=300, seed=s)),
    "square-l2": ("l2", lambda m, x, y, s: square(m, x, y, EPS_L2, norm="l2", queries=300, seed=s)),
    "autoattack": ("linf", lambda m, x, y, s: autoattack(m, x, y, EPS, seed=s, steps=5, square_queries=30)),
    "autoattack-custom-l2": ("l2", lambda m, x, y, s: autoattack(m, x, y, EPS_L2, norm="l2", seed=s,
                                                                 attacks=["apgd-dlr", "square"], steps=5,
                                                                 square_queries=30)),
    "trades": ("linf", lambda m, x, y, s: trades_kl(m, x, y, EPS, alpha=0.025, steps=5, seed=s)),
    "fire": ("linf", lambda m, x, y, s: fisher_rao(m, x, y, EPS, alpha=0.025, steps=5, seed=s,
                                                   batch_size=20)),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_contract(name, trained, batch):
    model, _, _ = trained
    x, y = batch[0][:48], batch[1][:48]
    norm, attack = ATTACKS[name]
    x_before = x.clone()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    marker = torch.full_like(model[-1].bias, 7.0)
    model[-1].bias.grad = marker.clone()      # a pre-existing gradient must survive untouched
    model.train()
    try:
        x_adv = attack(model, x, y, 0)
        assert model.training, "train mode not restored"
        assert all(p.requires_grad for p in model.parameters())
        assert torch.equal(model[-1].bias.grad, marker)
        assert all(p.grad is None for n, p in model.named_parameters() if n != "9.bias")
        for k, v in model.state_dict().items():        # BN running stats unchanged: attacked in eval mode
            assert torch.equal(v, buffers[k]), k
        assert type(model[2]) is nn.BatchNorm2d           # the BN module swapped during the attack is back
    finally:
        model.eval()
        model[-1].bias.grad = None
    assert torch.equal(x, x_before), "input modified"
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv is not x
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    eps = EPS if norm == "linf" else EPS_L2
    assert lp_norm(x_adv - x, norm).max() <= eps * (1 + 1e-5) + 1e-6
    # Every attack must do *something*: accuracy on its output is below the clean accuracy.
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)


@pytest.mark.parametrize("name", [n for n in ATTACKS if n not in ("fgsm", "autoattack")])
def test_attack_seed_reproducible(name, trained, batch):
    model, _, _ = trained
    x, y = batch[0][:8], batch[1][:8]
    _, attack = ATTACKS[name]
    assert torch.equal(attack(model, x, y, 3), attack(model, x, y, 3))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_rejects_bad_inputs(name, trained, batch):
    model, _, _ = trained
    x, y = batch[0][:4], batch[1][:4]
    _, attack = ATTACKS[name]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x * 2 + 0.5, y, 0)
    with pytest.raises(ValueError, match="shape"):
        attack(model, x[:, 0], y, 0)
    with pytest.raises(ValueError, match="one label per image"):
        attack(model, x, y[:3], 0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_rejects_non_finite_images(name, bad, trained, batch):
    model, _, _ = trained
    x, y = batch[0][:4].clone(), batch[1][:4]
    x[2, 0, 5, 7] = bad
    with pytest.raises(ValueError, match="images contain NaN or infinite values"):
        ATTACKS[name][1](model, x, y, 0)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_rejects_labels_outside_the_model_classes(name, trained, batch):
    model, _, _ = trained
    x, y = batch[0][:4], batch[1][:4].clone()
    _, attack = ATTACKS[name]
    y[1] = 10                                          # a 10-class model: 10 is no class
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 9\].*\[.*, 10\]"):
        attack(model, x, y, 0)
    y[1] = -1
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 9\]"):
        attack(model, x, y, 0)


def test_targeted_pgd_rejects_target_labels_outside_the_model_classes(trained, batch):
    model, _, _ = trained
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match=r"target labels must lie in \[0, 9\]"):
        pgd(model, x, y, EPS, 0.01, 2, targeted=True, target=torch.full_like(y, 12))
    with pytest.raises(ValueError, match="target must be a tensor of integer target labels"):
        pgd(model, x, y, EPS, 0.01, 2, targeted=True, target=y[:2])


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_rejects_images_in_another_dtype_than_the_model(name, trained, batch):
    model, _, _ = trained
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match=r"images are torch.float64 but the model computes in "
                                         r"torch.float32.*images.to\(torch.float32\)"):
        ATTACKS[name][1](model, x.double(), y, 0)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_on_an_empty_batch_returns_an_empty_batch(name, trained, batch):
    model, _, _ = trained
    x, y = batch[0][:0], batch[1][:0]
    x_adv = ATTACKS[name][1](model, x, y, 0)
    assert x_adv.shape == (0, 1, 28, 28) and x_adv.dtype == x.dtype and x_adv is not x


def test_attacks_run_in_float64_on_a_float64_model(trained, batch):
    model, _, _ = trained
    model64 = copy.deepcopy(model).double()
    x, y = batch[0][:32].double(), batch[1][:32]
    clean = accuracy(model64, x, y)
    for x_adv in (pgd(model64, x, y, EPS, 0.025, 5), apgd(model64, x, y, EPS, steps=5),
                  trades_kl(model64, x, y, eps=EPS, alpha=0.025, steps=5)):
        assert x_adv.dtype == torch.float64
        assert lp_norm(x_adv - x, "linf").max() <= EPS + 1e-12
        assert 0 <= x_adv.min() and x_adv.max() <= 1
    assert accuracy(model64, pgd(model64, x, y, EPS, 0.025, 5), y) < clean


def test_labels_are_optional_only_for_the_divergence_attacks(trained, batch):
    model, _, _ = trained
    x = batch[0][:4]
    assert trades_kl(model, x, eps=EPS, alpha=0.025, steps=2).shape == x.shape
    assert fisher_rao(model, x, None, eps=EPS, alpha=0.025, steps=2).shape == x.shape
    with pytest.raises(ValueError, match="needs the true labels y"):
        pgd(model, x, None, EPS, 0.025, 2)


def test_bad_arguments_raise(trained, batch):
    model, _, _ = trained
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, EPS, 0.01, 2, norm="l1")
    with pytest.raises(ValueError, match="loss"):
        apgd(model, x, y, EPS, loss="hinge")
    with pytest.raises(ValueError, match="target"):
        pgd(model, x, y, EPS, 0.01, 2, targeted=True)
    with pytest.raises(ValueError, match="eps"):
        fgsm(model, x, y, -1.0)
    with pytest.raises(ValueError, match="n_target_classes"):
        apgd(model, x, y, EPS, loss="dlr", targeted=True, n_target_classes=10)
    with pytest.raises(ValueError, match="version"):
        autoattack(model, x, y, EPS, version="fast")
    with pytest.raises(ValueError, match="unknown attacks"):
        autoattack(model, x, y, EPS, attacks=["apgd-ce", "cw"])


def test_batchnorm_as_affine_is_exact_and_restored(trained, batch):
    model, _, _ = trained
    x = batch[0]
    bn = model[2]
    with attack_mode(model), batchnorm_as_affine(model):
        assert type(model[2]) is not nn.BatchNorm2d
        swapped = model(x)
    assert model[2] is bn
    assert torch.allclose(swapped, model(x), rtol=1e-5, atol=1e-5)   # equal up to float rounding
    model.train()
    try:
        with batchnorm_as_affine(model):              # never in train mode: batch statistics are used there
            assert model[2] is bn
    finally:
        model.eval()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_as_affine_folds_conv_bn_pairs(channels_last, seed):
    # conv -> BN pairs inside a Sequential fold into the conv; a BN after anything else becomes
    # an affine map. Outputs and input gradients match the BatchNorms' up to float rounding.
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.BatchNorm2d(4), nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3))
    for m in model:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2), m.bias.data.uniform_(-1, 1)
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(5, 2, 9, 9).to(memory_format=fmt).requires_grad_(True)
    originals = list(model)

    def out_and_grad():
        out = model(x)
        grad, = torch.autograd.grad(out.square().sum(), x)
        return out.detach(), grad

    ref = out_and_grad()
    with batchnorm_as_affine(model):
        kinds = [type(m).__name__ for m in model]
        folded = out_and_grad()
    assert kinds == ["_FoldedConv", "Identity", "ReLU", "_EvalBatchNorm", "_FoldedConv", "Identity"]
    assert all(a is b for a, b in zip(model, originals))         # every module put back
    for a, b in zip(ref, folded):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


# -- the losses against hand-computed values ------------------------------------------------------

def test_margin_and_dlr_hand_computed():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
    y = torch.tensor([0, 1])
    assert torch.allclose(margin(z, y), torch.tensor([2.0, -3.0]))
    # DLR = -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-2.0 / 3.0, 3.0 / 4.0]))
    # targeted DLR = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    t = torch.tensor([2, 3])
    assert torch.allclose(dlr_targeted_loss(z, y, t), torch.tensor([-3.0 / 3.5, -1.0 / 4.5]))


# -- cross-checks against torchattacks on the same trained model ------------------------------------

torchattacks = pytest.importorskip("torchattacks")


def test_fgsm_matches_torchattacks_pixel_for_pixel(trained):
    model, x, y = trained
    x, y = x[:128], y[:128]            # a power-of-two batch: their mean vs our sum is an exact rescaling
    ours = fgsm(model, x, y, EPS)
    theirs = torchattacks.FGSM(model, eps=EPS)(x, y)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("eps,alpha,steps", [(EPS, 0.025, 10), (0.03, 0.01, 7)])
def test_pgd_matches_torchattacks_pixel_for_pixel(trained, eps, alpha, steps):
    model, x, y = trained
    x, y = x[:128], y[:128]
    ours = pgd(model, x, y, eps, alpha, steps, random_start=False)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert torch.equal(ours, theirs)


def test_pgd_l2_matches_torchattacks(trained):
    # Same algorithm; they divide by (||g|| + 1e-10), we by max(||g||, 1e-12), and their mean loss
    # vs our sum rescales g: one step agrees to rounding; over 10 steps rounding differences may
    # move a few samples across a ReLU kink, so we compare the outcome instead.
    model, x, y = trained
    x, y = x[:128], y[:128]
    one = pgd(model, x, y, EPS_L2, 0.3, 1, norm="l2", random_start=False)
    one_theirs = torchattacks.PGDL2(model, eps=EPS_L2, alpha=0.3, steps=1, random_start=False)(x, y)
    assert torch.allclose(one, one_theirs, atol=1e-5)
    ours = pgd(model, x, y, EPS_L2, 0.3, 10, norm="l2", random_start=False)
    theirs = torchattacks.PGDL2(model, eps=EPS_L2, alpha=0.3, steps=10, random_start=False)(x, y)
    assert (ours - theirs).abs().amax() < 1e-2 and (ours - theirs).abs().mean() < 1e-5
    assert abs(accuracy(model, ours, y) - accuracy(model, theirs, y)) <= 1 / 128


def test_apgd_at_least_as_strong_as_torchattacks(trained):
    model, x, y = trained
    x, y = x[:128], y[:128]
    eps = 0.06                          # a radius where the model is partly robust
    ours = accuracy(model, apgd(model, x, y, eps, steps=25), y)
    theirs = accuracy(model, torchattacks.APGD(model, eps=eps, steps=25, seed=0)(x, y), y)
    ours_t = accuracy(model, apgd(model, x, y, eps, steps=25, loss="dlr", targeted=True,
                                  n_target_classes=3), y)
    theirs_t = accuracy(model, torchattacks.APGDT(model, eps=eps, steps=25, n_restarts=1, n_classes=4,
                                                  seed=0)(x, y), y)
    assert 0.05 < theirs < accuracy(model, x, y)          # the comparison is not trivially 0 == 0
    assert ours <= theirs + 3 / 128
    assert ours_t <= theirs_t + 3 / 128


def test_autoattack_at_least_as_strong_as_torchattacks(trained):
    # The standard line-up at reduced budgets (25 steps, 3 targets, 300 queries) so that it fits a
    # unit test; torchattacks' MultiAttack runs the same four attacks on the still-robust points.
    model, x, y = trained
    x, y = x[:64], y[:64]
    eps = 0.08
    result = run_autoattack(model, x, y, eps, steps=25, square_queries=300, n_target_classes=3)
    theirs_attack = torchattacks.MultiAttack([
        torchattacks.APGD(model, eps=eps, steps=25, seed=0),
        torchattacks.APGDT(model, eps=eps, steps=25, n_classes=4, seed=0),
        torchattacks.FAB(model, eps=eps, steps=25, multi_targeted=True, n_classes=4, seed=0),
        torchattacks.Square(model, eps=eps, n_queries=300, seed=0)])
    theirs = accuracy(model, theirs_attack(x, y), y)
    model.zero_grad(set_to_none=True)     # torchattacks writes parameter grads; the model is shared
    assert list(result.robust_accuracy) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    accs = list(result.robust_accuracy.values())
    assert accs == sorted(accs, reverse=True)           # each stage only removes points
    assert accuracy(model, result.x_adv, y) == result.final_accuracy
    lines = result.table().splitlines()                  # every stage with its 95% interval on n
    assert result.n == len(y) and len(lines) == 1 + len(accs)
    assert lines[-1].startswith("square") and format_accuracy(accs[-1], len(y), short=True) in lines[-1]
    assert result.final_accuracy <= theirs + 2 / 64
    assert result.final_accuracy < result.clean_accuracy


def test_autoattack_plus_version_order_and_stages(trained, batch):
    model, _, _ = trained
    x, y = batch[0][:16], batch[1][:16]
    result = run_autoattack(model, x, y, 0.05, version="plus", steps=3, square_queries=20)
    assert list(result.robust_accuracy) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    accs = list(result.robust_accuracy.values())
    assert accs == sorted(accs, reverse=True) and accs[-1] < result.clean_accuracy
    assert accuracy(model, result.x_adv, y) == result.final_accuracy
