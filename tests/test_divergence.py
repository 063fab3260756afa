"""TRADES' and FIRE's inner maximisations as attacks (``rnb.attacks.trades_kl`` / ``fisher_rao``):
step for step against independent implementations written here, the generator semantics the
trainers rely on, and chunking. The attack contract (eps-ball, [0, 1], mode, gradients) is checked
for them with every other attack in test_attacks.py."""

import copy

import pytest
import torch
import torch.nn.functional as F

from robust_nb.attacks import batchnorm_as_affine, fisher_rao, lp_norm, trades_kl
from robust_nb.losses import kl_divergence_sum

EPS, ALPHA = 0.1, 0.025


@pytest.fixture(scope="module")
def trained(trained_convnet):
    return trained_convnet


def _straightforward_ascent(model, x, divergence, eps, alpha, steps, generator):
    """The TRADES loop written out plainly: eval mode, noise start, sign steps, clip. The eps-ball
    clip is ``x + clamp(x' - x)`` (bit for bit what the package computes; ``min(max(x', x - eps),
    x + eps)``, as in the authors' loops below, rounds differently in the last bit). The model runs
    with its BatchNorm folded into the conv before it, as every attack of the package runs it: the
    fold changes the last bits of the logits, enough to flip the sign of a few near-zero pixel
    gradients over six steps (the float64 test below compares with plain BatchNorm)."""
    was_training = model.training
    model.eval()
    try:
        with batchnorm_as_affine(model):
            with torch.no_grad():
                clean = model(x)
            x_adv = x + 0.001 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            for _ in range(steps):
                x_adv = x_adv.detach().requires_grad_(True)
                grad, = torch.autograd.grad(divergence(clean, model(x_adv)), x_adv)
                delta = (x_adv.detach() + alpha * grad.sign() - x).clamp(-eps, eps)
                x_adv = (x + delta).clamp(0.0, 1.0)
    finally:
        model.train(was_training)
    return x_adv


def _kl_sum(clean, adv):
    # sum_i KL(p_i || q_i) from log-softmaxes, in float32 (the same arithmetic as the package).
    log_p, log_q = F.log_softmax(clean.float(), 1), F.log_softmax(adv.float(), 1)
    return (log_p.exp() * (log_p - log_q)).sum()


def _fire_mean(clean, adv, stability=1e-6):
    log_p, log_q = F.log_softmax(clean.float(), 1), F.log_softmax(adv.float(), 1)
    bc = ((log_p + log_q) / 2).exp().sum(1)
    bc = bc - (bc - bc.clamp(max=1.0)).detach()
    return (torch.acos(bc - stability) ** 2).mean()


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("method", ["trades", "fire"])
def test_identical_to_a_straightforward_implementation(trained, method, seed):
    model, x, _ = trained
    x = x[64 * (seed % 4):64 * (seed % 4) + 64]
    attack, divergence = (trades_kl, _kl_sum) if method == "trades" else (fisher_rao, _fire_mean)
    model.train()                       # the attack must switch to eval mode itself
    try:
        ours = attack(model, x, eps=EPS, alpha=ALPHA, steps=6,
                      generator=torch.Generator().manual_seed(seed))
        assert model.training
    finally:
        model.eval()
    ref = _straightforward_ascent(model, x, divergence, EPS, ALPHA, 6,
                                  torch.Generator().manual_seed(seed))
    assert torch.equal(ours, ref)
    assert (ours - x).abs().max() > 0.9 * EPS           # the ascent really moved


def _reference_trades_attack(model, x, noise, eps, alpha, steps):
    # yaodongyu/TRADES trades.py (l_inf), with the model already in eval mode.
    criterion_kl = torch.nn.KLDivLoss(reduction="sum")
    x_adv = x.detach() + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_()
        loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)
    return x_adv


def _reference_fire_attack(model, x, noise, eps, alpha, steps, stability=1e-6):
    # MarinePICOT/Adversarial-Robustness-via-Fisher-Rao-Regularization src/losses.py (L-inf).
    s_nat = model(x).softmax(1).detach()
    x_adv = x.detach() + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_()
        s_adv = model(x_adv).softmax(1)
        loss = (torch.acos(((s_nat * s_adv) ** 0.5).sum(1) - stability) ** 2).mean(0)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)
    return x_adv


@pytest.mark.parametrize("method", ["trades", "fire"])
def test_matches_the_authors_loops_in_float64(trained, method):
    model = copy.deepcopy(trained[0]).double()
    x = trained[1][:32].double()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    attack, ref_attack = ((trades_kl, _reference_trades_attack) if method == "trades"
                          else (fisher_rao, _reference_fire_attack))
    ours = attack(model, x, eps=EPS, alpha=ALPHA, steps=6, seed=5)
    ref = ref_attack(model, x, noise, EPS, ALPHA, 6)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_generator_is_used_and_advanced_seed_otherwise(trained):
    model, x, _ = trained
    x = x[:16]
    kw = dict(eps=EPS, alpha=ALPHA, steps=3)
    # No generator: a fresh one seeded from `seed` -- the same call gives the same images.
    assert torch.equal(trades_kl(model, x, seed=3, **kw), trades_kl(model, x, seed=3, **kw))
    assert torch.equal(trades_kl(model, x, seed=3, **kw),
                       trades_kl(model, x, generator=torch.Generator().manual_seed(3), **kw))
    # A trainer's generator: consumed by each call, and restoring its state replays the call.
    gen = torch.Generator().manual_seed(11)
    first = trades_kl(model, x, generator=gen, **kw)
    state = gen.get_state()
    second = trades_kl(model, x, generator=gen, **kw)
    assert not torch.equal(first, second)
    gen.set_state(state)
    assert torch.equal(trades_kl(model, x, generator=gen, **kw), second)
    assert not torch.equal(trades_kl(model, x, seed=0, generator=gen, **kw),
                           trades_kl(model, x, seed=0, **kw))   # generator wins over seed


@pytest.mark.parametrize("attack", [trades_kl, fisher_rao])
def test_batch_size_changes_nothing_but_rounding(trained, attack):
    model = copy.deepcopy(trained[0]).double()
    x = trained[1][:40].double()
    whole = attack(model, x, eps=EPS, alpha=ALPHA, steps=4, seed=2)
    chunked = attack(model, x, eps=EPS, alpha=ALPHA, steps=4, seed=2, batch_size=12)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def test_the_ascent_increases_the_divergence(trained):
    model, x, _ = trained
    x = x[:64]
    with torch.no_grad():
        clean = model(x)
        start = trades_kl(model, x, eps=EPS, alpha=ALPHA, steps=0, seed=4)
        end = trades_kl(model, x, eps=EPS, alpha=ALPHA, steps=5, seed=4)
        assert kl_divergence_sum(clean, model(end)) > 100 * kl_divergence_sum(clean, model(start))


def test_zero_steps_returns_the_start_inside_the_ball(trained):
    model, x, _ = trained
    x = x[:16]
    tiny = 1e-4                                  # smaller than the 0.001 * N(0, 1) start noise
    out = trades_kl(model, x, eps=tiny, alpha=ALPHA, steps=0, seed=0)
    assert lp_norm(out - x, "linf").max() <= tiny + 1e-7
    assert 0 <= out.min() and out.max() <= 1
    assert (out != x).any()


def test_bad_arguments_raise(trained):
    model, x, y = trained
    x = x[:4]
    with pytest.raises(ValueError, match="stability"):
        fisher_rao(model, x, stability=1.5)
    with pytest.raises(ValueError, match="integer steps"):
        trades_kl(model, x, steps=2.5)
    with pytest.raises(ValueError, match="alpha"):
        trades_kl(model, x, alpha=-0.1)
    with pytest.raises(ValueError, match="eps"):
        fisher_rao(model, x, eps=float("nan"))
    with pytest.raises(ValueError, match="generator"):
        trades_kl(model, x, generator=0)
    with pytest.raises(ValueError, match="batch_size"):
        trades_kl(model, x, batch_size=0)
