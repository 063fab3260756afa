"""Robust accuracy, eps sweeps, input checks, the gradient-masking check and the attack explorer."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from robust_nb.attacks import fgsm, pgd  # noqa: E402
from robust_nb.evaluation import (  # noqa: E402
    InputQuantization,
    accuracy,
    eps_sweep,
    gradient_masking_check,
    predict_logits,
    robust_accuracy,
    robust_correct,
)
from robust_nb.stats import Accuracy, format_accuracy  # noqa: E402
from robust_nb.widgets import attack_example, attack_explorer  # noqa: E402


@pytest.fixture(scope="module")
def trained(trained_convnet):
    model, x, y = trained_convnet
    return model, x[:64], y[:64]


def test_robust_accuracy_equals_accuracy_on_the_attack_output(trained):
    model, x, y = trained
    kw = dict(eps=0.1, alpha=0.025, steps=5, seed=1)
    expected = accuracy(model, pgd(model, x, y, **kw), y)
    assert robust_accuracy(model, x, y, "pgd", **kw) == expected
    assert robust_accuracy(model, x, y, pgd, **kw) == expected           # a callable works too
    assert robust_accuracy(model, x, y, "fgsm", eps=0.0) == accuracy(model, x, y)
    with pytest.raises(ValueError, match="unknown attack"):
        robust_accuracy(model, x, y, "deepfool", eps=0.1)


@pytest.mark.parametrize("seed", range(5))
def test_robust_correct_is_per_image_and_matches_robust_accuracy(trained, seed):
    model, x, y = trained
    kw = dict(eps=0.1, alpha=0.025, steps=5, seed=seed)
    ok = robust_correct(model, x, y, "pgd", **kw)
    assert ok.dtype == torch.bool and ok.shape == y.shape
    x_adv = pgd(model, x, y, **kw)
    assert torch.equal(ok, predict_logits(model, x_adv).argmax(1) == y)  # image by image
    assert ok.sum().item() / len(y) == robust_accuracy(model, x, y, "pgd", **kw)
    assert 0 < ok.sum() < len(y)                 # some images fooled, some not: a real comparison


def test_eps_sweep_table_and_plot(trained):
    model, x, y = trained
    sweep = eps_sweep(model, x, y, [0.0, 0.05, 0.1, 0.2], attacks=("fgsm", "pgd"), steps=5, progress=False)
    clean = accuracy(model, x, y)
    for name in ("fgsm", "pgd"):
        acc = sweep.accuracy[name]
        assert acc[0] == clean
        assert acc[-1] < clean - 0.3                      # a large eps breaks an undefended model
        steps = zip(acc[:-1], acc[1:], strict=True)
        assert all(b <= a + 1 / 64 for a, b in steps)     # (nearly) monotone in eps
    # PGD is at least as strong as FGSM at every eps (up to one sample).
    pairs = zip(sweep.accuracy["fgsm"], sweep.accuracy["pgd"], strict=True)
    assert all(p <= f + 1 / 64 for f, p in pairs)
    assert sweep.accuracy["fgsm"][2] == accuracy(model, fgsm(model, x, y, 0.1), y)
    table = sweep.table()
    assert "pgd" in table and len(table.splitlines()) == 5
    assert format(Accuracy(clean, len(y)), "short") in table.splitlines()[1]   # with its interval
    assert len({len(line) for line in table.splitlines()}) == 1                     # aligned columns
    fig = sweep.plot()
    assert len(fig.axes[0].containers) == 2 and sweep.n == len(y)    # one errorbar line per attack
    with pytest.raises(ValueError, match="eps_values"):
        eps_sweep(model, x, y, [-0.1])


def test_input_quantization_hides_gradients_but_not_the_decision(trained):
    model, x, y = trained
    defended = InputQuantization(model, levels=8)
    xr = x.clone().requires_grad_()
    defended(xr).sum().backward()
    model.zero_grad(set_to_none=True)                     # leave the shared model as we found it
    assert torch.count_nonzero(xr.grad) == 0              # rounding: zero gradient everywhere
    assert accuracy(defended, x, y) > 0.8                 # 3-bit digits are still digits
    with pytest.raises(ValueError, match="levels"):
        InputQuantization(model, levels=1)


def test_gradient_masking_check_flags_quantization_not_the_plain_model(trained):
    model, x, y = trained
    kw = dict(eps=0.15, steps=5, strong_steps=20, strong_restarts=2, square_queries=300)
    plain = gradient_masking_check(model, x, y, **kw)
    masked = gradient_masking_check(InputQuantization(model, levels=8), x, y, **kw)
    assert not plain.warnings, str(plain)
    assert plain.zero_grad_fraction == 0 and plain.large_eps <= 0.2
    assert masked.zero_grad_fraction == 1.0
    assert masked.pgd > plain.pgd + 0.3                   # PGD "sees" a robust model...
    assert masked.square < masked.pgd - 0.1               # ...which Square exposes
    text = " ".join(masked.warnings)
    assert "Square" in text and "zero loss gradient" in text
    assert "warnings" in str(masked) and masked.suspicious and not plain.suspicious
    assert masked.n == len(y) and format_accuracy(masked.square, len(y), short=True) in str(masked)


def test_attack_example_and_explorer(trained):
    model, x, y = trained
    res = attack_example(model, x[0], y[0], "pgd", "linf", eps=0.3, steps=10)
    assert res["clean_pred"] == int(y[0]) and res["adv_pred"] != int(y[0])
    assert (res["x_adv"] - res["x"]).abs().max() <= 0.3 + 1e-6
    assert torch.allclose(res["probs"].sum(1), torch.ones(2))
    assert len(res["figure"].axes) == 3
    with pytest.raises(ValueError, match="L-inf"):
        attack_example(model, x[0], y[0], "fgsm", "l2", eps=1.0)
    widget = attack_explorer(model, x[:4], y[:4], eps_max=0.2, eps_max_l2=2.0, steps=3)
    norm_dropdown, linf_slider, l2_slider = widget.children[1].children   # one eps slider per norm
    assert linf_slider.max == pytest.approx(0.2) and l2_slider.max == pytest.approx(2.0)
    norm_dropdown.value = "l2"                             # switching norm shows the L2 slider only
    assert l2_slider.layout.display is None and linf_slider.layout.display == "none"


def test_robust_accuracy_passes_batch_size_to_the_attack(trained):
    model, x, y = trained
    seen = {}

    def spy(model, x, y, **kw):
        seen.update(kw)
        return x.clone()

    assert robust_accuracy(model, x, y, spy, batch_size=7, eps=0.1) == accuracy(model, x, y)
    assert seen == {"batch_size": 7, "eps": 0.1}
    kw = dict(eps=0.1, alpha=0.025, steps=5, random_start=False)
    assert (robust_accuracy(model, x, y, "pgd", batch_size=16, **kw)
            == accuracy(model, pgd(model, x, y, batch_size=16, **kw), y))
    for name in ("fgsm", "trades"):                    # every registry attack takes batch_size
        assert 0 <= robust_accuracy(model, x, y, name, batch_size=16, eps=0.1) <= 1


def test_unknown_attack_lists_the_registry(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="unknown attack 'cw'.*'fgsm'.*'autoattack'.*'fire'"):
        robust_accuracy(model, x, y, "cw", eps=0.1)
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        eps_sweep(model, x, y, [0.0, 0.1], attacks=("pgd", "cw"), progress=False)
    with pytest.raises(ValueError, match="fgsm supports L-inf only"):
        eps_sweep(model, x, y, [0.1], attacks=("fgsm",), norm="l2", progress=False)


def test_accuracy_checks_its_inputs(trained):
    model, x, y = trained
    bad = y.clone()
    bad[3] = 10
    with pytest.raises(ValueError, match=r"class indices in \[0, 9\] for a model with 10 outputs"):
        accuracy(model, x, bad)
    with pytest.raises(ValueError, match=r"class indices in \[0, 9\]"):
        robust_accuracy(model, x, bad, "pgd", eps=0.1, alpha=0.025, steps=2)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        accuracy(model, nan, y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        predict_logits(model, nan)
    with pytest.raises(ValueError, match="torch.float64 but the model computes in torch.float32"):
        accuracy(model, x.double(), y)
    with pytest.raises(ValueError, match="empty batch"):
        accuracy(model, x[:0], y[:0])
    assert predict_logits(model, x[:0]).shape == (0, 10)
