"""Adaptive-attack tools: BPDA (gradients where the true gradient is zero, the forward pass
untouched), EOT (the gradient is the mean over passes, checked against a hand loop with the same
random draws), the CW margin and DLR losses (against hand-computed values and a hand-written
FGSM step), the registry's ``eot_samples``, and clear errors for bad arguments."""

import pytest
import torch
from torch import nn

from robust_nb.attacks import (
    ATTACKS,
    BPDA,
    LOSSES,
    apgd,
    bpda,
    ce_loss,
    cw_loss,
    cw_targeted_loss,
    default_kwargs,
    dlr_loss,
    eot_logits,
    fgsm,
    loss_and_grad,
    loss_fn,
    margin,
    pgd,
)
from robust_nb.defenses import AdditiveNoise, Defended, Discretize, RandomResizePad

EPS = 0.1


@pytest.fixture(scope="module")
def batch(trained_convnet):
    model, x, y = trained_convnet
    return model, x[:32], y[:32]


# -- BPDA ------------------------------------------------------------------------------------------

def _quantize(x):
    return torch.round(x * 3) / 3


def test_bpda_identity_passes_the_gradient_where_round_has_none():
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    true_grad, = torch.autograd.grad((_quantize(x) * w).sum(), x)
    assert torch.count_nonzero(true_grad) == 0                   # round(): zero gradient
    out = bpda(_quantize)(x)
    assert torch.equal(out, _quantize(x))                         # the forward pass, bit for bit
    grad, = torch.autograd.grad((out * w).sum(), x)
    assert torch.equal(grad, w)                                   # identity backward: d(out.w)/dx = w


def test_bpda_surrogate_gives_the_surrogate_gradient():
    x = torch.rand(3, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 5, 5, dtype=torch.float64)

    def surrogate(t):
        return torch.sigmoid(4 * t)

    out = bpda(_quantize, surrogate)(x)
    assert torch.equal(out, _quantize(x))
    grad, = torch.autograd.grad((out * w).sum(), x)
    expected, = torch.autograd.grad((surrogate(x) * w).sum(), x)
    assert torch.allclose(grad, expected, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(lambda t: bpda(lambda s: 2 * s, lambda s: 2 * s)(t), (x,))


def test_bpda_without_gradients_is_the_preprocessing_and_registers_modules():
    x = torch.rand(2, 1, 4, 4)
    with torch.no_grad():
        assert torch.equal(bpda(_quantize)(x), _quantize(x))
    q = Discretize(4)
    wrapped = bpda(q)
    assert isinstance(wrapped, BPDA) and wrapped.preprocess is q
    wrapped.eval()
    assert not q.training


def test_defended_bpda_shares_the_model_and_keeps_the_forward_pass(batch):
    model, x, y = batch
    defended = Defended(Discretize(4), model)
    attacker = defended.bpda()
    assert attacker.model is model and isinstance(attacker.preprocess, BPDA)
    with torch.no_grad():
        assert torch.equal(attacker(x), defended(x))
    _, _, grad_plain = loss_and_grad(defended, x, ce_loss, y)
    _, _, grad_bpda = loss_and_grad(attacker, x, ce_loss, y)
    assert torch.count_nonzero(grad_plain) == 0                  # what a plain attack sees
    assert (grad_bpda.flatten(1).abs().sum(1) > 0).all()          # what BPDA sees
    # BPDA-identity's gradient is the model's gradient at the preprocessed point.
    _, _, grad_model = loss_and_grad(model, Discretize(4)(x), ce_loss, y)
    assert torch.allclose(grad_bpda, grad_model, rtol=1e-5, atol=1e-7)


def test_bpda_rejects_bad_arguments():
    with pytest.raises(ValueError, match="preprocess must be callable"):
        bpda(3)
    with pytest.raises(ValueError, match="surrogate"):
        bpda(_quantize, surrogate="identity")
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="keeps the shape"):
        bpda(lambda t: t[:, :, :2])(x)
    with pytest.raises(ValueError, match="must agree"):
        bpda(_quantize, lambda t: t[:, :, :2])(x).sum().backward()
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        Defended(_quantize, lambda t: t)


# -- EOT -------------------------------------------------------------------------------------------

def test_eot_gradient_is_the_mean_over_the_same_draws(batch):
    model, x, y = batch
    k = 6
    noisy = Defended(AdditiveNoise(0.3, seed=5), model)
    noisy.preprocess.reset()
    hand = [loss_and_grad(noisy, x, ce_loss, y) for _ in range(k)]   # k passes, one draw each
    noisy.preprocess.reset()
    loss, logits, grad = loss_and_grad(noisy, x, ce_loss, y, eot_samples=k)
    for i, ours in enumerate((loss, logits, grad)):
        mean = sum(h[i] for h in hand) / k
        assert torch.allclose(ours, mean, rtol=1e-5, atol=1e-7)
    # the draws really differ, so the mean is not any one of them
    assert not torch.allclose(hand[0][2], hand[1][2])
    assert (grad - hand[0][2]).abs().max() > 1e-3 * hand[0][2].abs().max()
    noisy.preprocess.reset()
    with torch.no_grad():
        mean_logits = sum(noisy(x) for _ in range(k)) / k
    noisy.preprocess.reset()
    assert torch.allclose(eot_logits(noisy, x, k), mean_logits, rtol=1e-5, atol=1e-6)


def test_eot_on_a_deterministic_model_is_the_plain_gradient(batch):
    model, x, y = batch
    _, _, plain = loss_and_grad(model, x, ce_loss, y)
    _, _, eot = loss_and_grad(model, x, ce_loss, y, eot_samples=4)
    assert torch.allclose(plain, eot, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "apgd"])
def test_attacks_with_eot_are_reproducible_and_keep_the_contract(attack, batch):
    model, x, y = batch
    defended = Defended(RandomResizePad(0.8, seed=1), model)
    call = {"fgsm": lambda: fgsm(defended, x, y, EPS, eot_samples=3),
            "pgd": lambda: pgd(defended, x, y, EPS, 0.025, 4, eot_samples=3, restarts=2),
            "apgd": lambda: apgd(defended, x, y, EPS, steps=4, eot_samples=3)}[attack]
    model.train()
    try:
        defended.preprocess.reset()
        first = call()
        defended.preprocess.reset()
        assert torch.equal(call(), first)
        assert model.training and model[2].training                  # modes as found
    finally:
        model.eval()
    assert all(p.grad is None for p in model.parameters())
    assert first.shape == x.shape and 0 <= first.min() and first.max() <= 1
    assert (first - x).abs().max() <= EPS + 1e-6


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "10", None])
def test_bad_eot_samples_raise(bad, batch):
    model, x, y = batch
    for call in (lambda: fgsm(model, x, y, EPS, eot_samples=bad),
                 lambda: pgd(model, x, y, EPS, 0.025, 2, eot_samples=bad),
                 lambda: apgd(model, x, y, EPS, steps=2, eot_samples=bad),
                 lambda: loss_and_grad(model, x, ce_loss, y, eot_samples=bad),
                 lambda: default_kwargs("pgd", EPS, eot_samples=bad)):
        with pytest.raises(ValueError, match="eot_samples must be a positive integer"):
            call()


def test_registry_adds_eot_samples_only_to_attacks_that_have_it():
    assert {n for n, s in ATTACKS.items() if s.eot} == {"fgsm", "pgd", "apgd"}
    assert default_kwargs("apgd", EPS, steps=20, eot_samples=8) == {
        "eps": EPS, "norm": "linf", "steps": 20, "eot_samples": 8}
    assert "eot_samples" not in default_kwargs("pgd", EPS, eot_samples=1)
    with pytest.raises(ValueError, match="square has no EOT"):
        default_kwargs("square", EPS, eot_samples=4)


def test_a_detached_preprocessing_gives_a_zero_gradient_not_an_error(batch):
    model, x, y = batch
    defended = Defended(lambda t: t.detach(), model)
    _, _, grad = loss_and_grad(defended, x, ce_loss, y, eot_samples=2)
    assert torch.count_nonzero(grad) == 0


# -- CW and DLR losses -----------------------------------------------------------------------------

def test_cw_and_dlr_losses_hand_computed():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0], [1.0, 4.0, 2.0, 2.0]])
    y = torch.tensor([0, 1, 3])
    # CW: max_{i != y} z_i - z_y
    assert torch.equal(cw_loss(z, y), torch.tensor([1.0 - 3.0, 5.0 - 2.0, 4.0 - 2.0]))
    assert torch.equal(cw_loss(z, y), -margin(z, y))
    # targeted CW: z_t - max_{i != t} z_i
    t = torch.tensor([2, 2, 0])
    assert torch.equal(cw_targeted_loss(z, y, t), torch.tensor([0.0 - 3.0, 5.0 - 2.0, 1.0 - 4.0]))
    # DLR: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-2.0 / 3.0, 3.0 / 4.0, 2.0 / 2.0]))
    # both shift invariant; CW scales with the logits, DLR is scale invariant
    assert torch.allclose(cw_loss(7 * z + 3, y), 7 * cw_loss(z, y))
    assert torch.allclose(dlr_loss(7 * z + 3, y), dlr_loss(z, y))


def test_loss_names():
    assert LOSSES == ("ce", "cw", "dlr")
    assert loss_fn("cw") is cw_loss and loss_fn("cw", targeted=True) is cw_targeted_loss
    for bad in ("hinge", "CW", None, 3):
        with pytest.raises(ValueError, match=r"unknown loss .*'ce', 'cw', 'dlr'"):
            loss_fn(bad)


@pytest.mark.parametrize("loss", ["cw", "dlr"])
def test_fgsm_and_pgd_step_on_the_named_loss(loss, batch):
    model, x, y = batch
    fn = {"cw": cw_loss, "dlr": dlr_loss}[loss]
    xg = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(fn(model(xg), y).sum(), xg)
    by_hand = (x + EPS * grad.sign()).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, EPS, loss=loss), by_hand)
    # one PGD step without random start is the same step
    assert torch.equal(pgd(model, x, y, EPS, EPS, 1, random_start=False, loss=loss), by_hand)
    assert not torch.equal(fgsm(model, x, y, EPS, loss="ce"), by_hand)


def test_unknown_loss_names_raise(batch):
    model, x, y = batch
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        pgd(model, x, y, EPS, 0.025, 2, loss="hinge")
    with pytest.raises(ValueError, match="unknown loss 'margin'"):
        fgsm(model, x, y, EPS, loss="margin")
    with pytest.raises(ValueError, match="unknown loss"):
        apgd(model, x, y, EPS, loss="xent")


def test_cw_loss_works_through_a_saturated_softmax(batch):
    """The reason for the CW loss: scaled logits zero the CE gradient but not the CW one."""
    model, x, y = batch

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, t):
            return 1000 * self.model(t)

    scaled = Scaled()
    _, _, g_ce = loss_and_grad(scaled, x, ce_loss, y)
    _, _, g_cw = loss_and_grad(scaled, x, cw_loss, y)
    zero_ce = (g_ce.flatten(1).abs().sum(1) == 0).float().mean()
    zero_cw = (g_cw.flatten(1).abs().sum(1) == 0).float().mean()
    assert zero_ce > 0.5 and zero_cw == 0
