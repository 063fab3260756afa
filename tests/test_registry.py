"""The attack registry: names, supported norms, default keyword arguments (every default is a valid
call of its attack), the Madry step rule and the errors for unknown names and norms."""

import pytest
import torch

import robust_nb as rnb
from robust_nb.attacks import ATTACKS, default_kwargs, get_attack, lp_norm, madry_alpha
from robust_nb.attacks.registry import SQUARE_QUERIES_PER_STEP
from robust_nb.evaluation import accuracy

NAMES = ("fgsm", "pgd", "apgd", "fab", "square", "autoattack", "trades", "fire")


def test_registry_names_and_functions():
    assert tuple(ATTACKS) == NAMES
    functions = dict(fgsm=rnb.attacks.fgsm, pgd=rnb.attacks.pgd, apgd=rnb.attacks.apgd,
                     fab=rnb.attacks.fab, square=rnb.attacks.square,
                     autoattack=rnb.attacks.autoattack, trades=rnb.attacks.trades_kl,
                     fire=rnb.attacks.fisher_rao)
    for name, spec in ATTACKS.items():
        assert spec.name == name and spec.fn is functions[name] and get_attack(name) is spec
        assert set(spec.norms) <= {"linf", "l2"} and spec.summary
    assert {n for n, s in ATTACKS.items() if s.norms == ("linf",)} == {"fgsm", "trades", "fire"}


def test_unknown_name_lists_every_attack():
    with pytest.raises(ValueError) as info:
        get_attack("deepfool")
    assert "deepfool" in str(info.value) and all(repr(n) in str(info.value) for n in NAMES)
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        default_kwargs("cw", 0.1)


@pytest.mark.parametrize("eps,steps", [(8 / 255, 10), (0.3, 40), (0.5, 7), (0.0, 1)])
def test_madry_alpha_is_two_and_a_half_radii_over_the_steps(eps, steps):
    assert madry_alpha(eps, steps) == pytest.approx(2.5 * eps / steps, rel=1e-15)
    assert default_kwargs("pgd", eps, steps=steps)["alpha"] == madry_alpha(eps, steps)
    for name in ("trades", "fire"):
        assert default_kwargs(name, eps, steps=steps)["alpha"] == madry_alpha(eps, steps)


def test_madry_alpha_rejects_bad_arguments():
    for eps, steps in [(0.1, 0), (0.1, 2.5), (-0.1, 10), (float("nan"), 10)]:
        with pytest.raises(ValueError, match="eps|steps"):
            madry_alpha(eps, steps)


def test_default_kwargs_per_attack():
    eps = 0.1
    assert default_kwargs("fgsm", eps) == {"eps": eps}
    assert default_kwargs("pgd", eps, "l2", 4) == {"eps": eps, "alpha": 2.5 * eps / 4,
                                                   "steps": 4, "norm": "l2"}
    assert default_kwargs("apgd", eps, steps=20) == {"eps": eps, "norm": "linf", "steps": 20}
    assert default_kwargs("fab", eps, "l2", 20) == {"eps": eps, "norm": "l2", "steps": 20}
    assert default_kwargs("square", eps, steps=20) == {"eps": eps, "norm": "linf",
                                                       "queries": 20 * SQUARE_QUERIES_PER_STEP}
    # AutoAttack's budgets: 100 steps <-> 5,000 Square queries.
    assert default_kwargs("autoattack", eps, steps=100) == {"eps": eps, "norm": "linf",
                                                            "steps": 100, "square_queries": 5000}
    assert default_kwargs("trades", eps, steps=5) == {"eps": eps, "alpha": 0.05, "steps": 5}


@pytest.mark.parametrize("name", ["fgsm", "trades", "fire"])
def test_default_kwargs_rejects_a_norm_the_attack_lacks(name):
    with pytest.raises(ValueError, match=f"{name} supports L-inf only"):
        default_kwargs(name, 1.0, "l2")
    with pytest.raises(ValueError, match="supports L-inf and L2 only"):
        default_kwargs("pgd", 1.0, "l1")


@pytest.mark.parametrize("name,norm", [(n, norm) for n, s in ATTACKS.items() for norm in s.norms])
def test_every_default_is_a_valid_call(name, norm, trained_convnet):
    model, x, y = trained_convnet
    x, y = x[:12], y[:12]
    eps = 0.15 if norm == "linf" else 2.0
    x_adv = get_attack(name)(model, x, y, seed=1, **default_kwargs(name, eps, norm, steps=3))
    assert x_adv.shape == x.shape and 0 <= x_adv.min() and x_adv.max() <= 1
    assert lp_norm(x_adv - x, norm).max() <= eps * (1 + 1e-5) + 1e-6
    assert not torch.equal(x_adv, x)
    if name not in ("trades", "fire"):              # those ascend a divergence, not the loss
        assert accuracy(model, x_adv, y) <= accuracy(model, x, y)
