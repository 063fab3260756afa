"""TRADES / FIRE losses and the Fisher-Rao distance against their formulas, computed independently."""

import math

import pytest
import torch
import torch.nn.functional as F

from robust_nb.losses import fire_loss, fisher_rao_distance, kl_divergence_sum, trades_loss


def _logits(seed, b=16, k=10, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, k, generator=g, dtype=dtype)).requires_grad_()


def _labels(b=16, k=10):
    return torch.arange(b) % k


def _reference_trades(clean, adv, y, beta):
    # yaodongyu/TRADES trades.py: CE + beta * KLDivLoss(sum)(log_softmax(adv), softmax(clean)) / B
    kl = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1))
    return F.cross_entropy(clean, y) + beta * kl / len(y)


def _reference_fire(clean, adv, y, beta, eps=1e-6):
    # MarinePICOT/...Fisher-Rao-Regularization src/losses.py: acos(sum sqrt(p q) - eps)^2, batch mean
    bc = ((F.softmax(clean, 1) * F.softmax(adv, 1)) ** 0.5).sum(1)
    return F.cross_entropy(clean, y) + beta * (torch.acos(bc - eps) ** 2).mean()


def test_trades_loss_matches_the_reference_formula_and_its_gradients():
    clean, adv, y = _logits(0), _logits(1), _labels()
    ours = trades_loss(clean, adv, y, beta=6.0)
    ref = _reference_trades(clean, adv, y, 6.0)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    # The hand formula once more, without torch's losses.
    p, q = clean.detach().softmax(1), adv.detach().softmax(1)
    by_hand = (-p[torch.arange(16), y].log()).mean() + 6.0 * (p * (p / q).log()).sum(1).mean()
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # Gradients flow through both arguments exactly as in the reference (clean is not detached).
    g_ours = torch.autograd.grad(ours, [clean, adv])
    g_ref = torch.autograd.grad(_reference_trades(clean, adv, y, 6.0), [clean, adv])
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_trades_regulariser_vanishes_on_equal_outputs_and_is_positive_otherwise():
    clean, y = _logits(2), _labels()
    ce = F.cross_entropy(clean, y)
    assert trades_loss(clean, clean, y, beta=6.0).item() == pytest.approx(ce.item(), abs=1e-12)
    assert trades_loss(clean, _logits(3), y, beta=0.0).item() == pytest.approx(ce.item(), abs=1e-12)
    assert trades_loss(clean, _logits(3), y, beta=1.0).item() > ce.item() + 1e-3


def test_kl_divergence_sum_is_the_references_kldivloss_sum():
    clean, adv = _logits(15), _logits(16)
    ref = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1))
    ours = kl_divergence_sum(clean, adv)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    grads = zip(torch.autograd.grad(ours, [clean, adv]), torch.autograd.grad(ref, [clean, adv]),
                strict=True)
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # TRADES' regulariser is this sum over the batch size.
    y = _labels()
    beta_term = trades_loss(clean, adv, y, 1.0) - F.cross_entropy(clean, y)
    assert beta_term.item() == pytest.approx(ours.item() / len(y), rel=1e-10)


def test_kl_divergence_sum_upcasts_half_precision_and_checks_shapes():
    clean, adv = _logits(17, dtype=torch.float32), _logits(18, dtype=torch.float32)
    half = kl_divergence_sum(clean.bfloat16(), adv.bfloat16())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(kl_divergence_sum(clean, adv).item(), rel=0.05)
    assert kl_divergence_sum(clean, clean).abs().item() < 1e-5
    with pytest.raises(ValueError, match="shape"):
        kl_divergence_sum(clean, adv[:, :5])


def test_fire_loss_matches_the_authors_formula_and_its_gradients():
    clean, adv, y = _logits(4), _logits(5), _labels()
    ours = fire_loss(clean, adv, y, beta=20.0)
    ref = _reference_fire(clean, adv, y, 20.0)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    g_ours = torch.autograd.grad(ours, [clean, adv])
    g_ref = torch.autograd.grad(_reference_fire(clean, adv, y, 20.0), [clean, adv])
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Without the stabiliser, the regulariser is (Fisher-Rao distance / 2)^2 on the batch.
    p, q = clean.detach().softmax(1), adv.detach().softmax(1)
    fr = fisher_rao_distance(p, q)
    ce = F.cross_entropy(clean.detach(), y)
    assert (ours.item() - ce.item()) / 20.0 == pytest.approx(((fr / 2) ** 2).mean().item(), rel=1e-3)


def test_fire_gradient_is_finite_where_the_distributions_coincide_or_underflow():
    y = _labels()
    clean = _logits(6, dtype=torch.float32)
    loss = fire_loss(clean, clean.detach().clone().requires_grad_(), y, beta=6.0)
    grads = torch.autograd.grad(loss, [clean])
    assert torch.isfinite(grads[0]).all()
    # Confident outputs: p_k * q_k underflows to 0 in float32. The reference's (p*q)**0.5 gives
    # NaN gradients there; ours computes sqrt(p q) from log-probabilities and stays finite.
    big = _logits(7, scale=60.0, dtype=torch.float32)
    other = _logits(8, scale=60.0, dtype=torch.float32)
    assert torch.isnan(torch.autograd.grad(_reference_fire(big, other, y, 6.0), [other])[0]).any()
    loss = fire_loss(big, other, y, beta=6.0)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, [big, other]))


def test_fisher_rao_distance_matches_two_arccos_bhattacharyya():
    p, q = _logits(9).detach().softmax(1), _logits(10).detach().softmax(1)
    expected = 2 * torch.acos((p * q).sqrt().sum(1))
    torch.testing.assert_close(fisher_rao_distance(p, q), expected, rtol=1e-10, atol=1e-10)


def test_fisher_rao_distance_is_a_metric_on_the_simplex():
    p, q, r = (_logits(s).detach().softmax(1) for s in (11, 12, 13))
    d = fisher_rao_distance
    assert d(p, p).abs().max().item() < 1e-7                                  # 0 on equal
    torch.testing.assert_close(d(p, q), d(q, p))                             # symmetric
    assert (d(p, r) <= d(p, q) + d(q, r) + 1e-12).all()                      # triangle inequality
    assert ((d(p, q) > 0) & (d(p, q) <= math.pi)).all()


def test_fisher_rao_distance_is_pi_for_disjoint_supports():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    q = torch.tensor([[0.0, 0.3, 0.7], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(fisher_rao_distance(p, q), torch.full((2,), math.pi))


def test_fisher_rao_distance_has_finite_gradients_at_equal_distributions():
    logits = _logits(14, dtype=torch.float32)
    p = logits.softmax(1)
    q = logits.detach().clone().requires_grad_().softmax(1)
    (gp,) = torch.autograd.grad(fisher_rao_distance(p, q).sum(), [logits])
    assert torch.isfinite(gp).all()
    one_hot = torch.eye(4, requires_grad=True)
    (g1,) = torch.autograd.grad(fisher_rao_distance(one_hot, one_hot.detach()).sum(), [one_hot])
    assert torch.isfinite(g1).all()


@pytest.mark.parametrize("fn", [trades_loss, fire_loss])
def test_losses_reject_bad_input(fn):
    clean, adv, y = _logits(0), _logits(1), _labels()
    with pytest.raises(ValueError, match="shape"):
        fn(clean, adv[:, :5], y, 1.0)
    with pytest.raises(ValueError, match="labels"):
        fn(clean, adv, y[:3], 1.0)
    with pytest.raises(ValueError, match="beta"):
        fn(clean, adv, y, -1.0)


def test_fisher_rao_distance_rejects_non_distributions():
    p = torch.full((2, 4), 0.25)
    with pytest.raises(ValueError, match="probability"):
        fisher_rao_distance(p, torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="same shape"):
        fisher_rao_distance(p, p[:, :3])
