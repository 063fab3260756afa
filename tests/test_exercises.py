"""rnb.exercises: every check accepts the instructor notebooks' own solutions (on five seeds) and
rejects typical wrong answers with the advice a student needs; use() falls back to the package."""

import re

import nbformat
import pytest
import torch
import torch.nn.functional as F

import robust_nb as rnb
from robust_nb import exercises as ex
from robust_nb.__main__ import NOTEBOOK_DIR
from robust_nb.student import BEGIN

SEEDS = range(5)


def _solutions() -> dict:
    """Every exercise function of the instructor notebooks, defined by running the notebooks'
    exercise cells (solutions in place) in one namespace."""
    namespace = {"torch": torch, "F": F, "rnb": rnb}
    for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and BEGIN in cell.source:
                exec(compile(cell.source, f"{path.stem}:{cell.get('id')}", "exec"), namespace)
    return namespace


SOLUTIONS = _solutions()

# check function -> the names of the learner's functions it takes
CHECKS = {
    ex.check_normalize: ["normalize"],
    ex.check_basic_block_forward: ["basic_block_forward"],
    ex.check_dropblock: ["dropblock_gamma", "keep_mask"],
    ex.check_ema_update: ["ema_update"],
    ex.check_fgsm: ["fgsm_attack"],
    ex.check_pgd: ["pgd_attack"],
    ex.check_adversarial_loss: ["adversarial_loss"],
    ex.check_trades_loss: ["trades_loss"],
    ex.check_fisher_rao_distance: ["fisher_rao_distance"],
    ex.check_ece: ["binned_ece"],
    ex.check_straight_through: ["straight_through"],
    ex.check_corruption_errors: ["corruption_errors"],
}


def test_every_exercise_has_a_check_and_a_solution_in_the_notebooks():
    checked = {name for names in CHECKS.values() for name in names}
    assert checked == set(ex.REFERENCES)
    assert checked <= set(SOLUTIONS), checked - set(SOLUTIONS)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_notebooks_solutions_pass(check, seed, capsys):
    check(*(SOLUTIONS[name] for name in CHECKS[check]), seed=seed)
    assert "check passed" in capsys.readouterr().out


def _not_written(*args):
    raise NotImplementedError()


def test_an_unfinished_exercise_says_so():
    with pytest.raises(ex.ExerciseFailed, match="not written yet: replace `raise NotImplementedError"):
        ex.check_fgsm(_not_written)
    assert issubclass(ex.ExerciseFailed, AssertionError)


# -- typical wrong answers: (check, the wrong functions by name, words the advice must contain) --

def _mode(model, training):
    return rnb.modes.model_mode(model, training=training)


def _input_grad(model, x, y, loss_scale=1.0):
    with _mode(model, False):
        xg = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(xg), y) * loss_scale, xg)
    return grad


def fgsm_gradient_value(model, x, y, eps):
    return (x + eps * _input_grad(model, x, y)).clamp(0, 1)


def fgsm_descends(model, x, y, eps):
    return (x - eps * _input_grad(model, x, y).sign()).clamp(0, 1)


def fgsm_mode_not_restored(model, x, y, eps):
    model.eval()
    xg = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    return (x + eps * grad.sign()).clamp(0, 1)


def fgsm_backward(model, x, y, eps):
    with _mode(model, False):
        xg = x.clone().requires_grad_(True)
        F.cross_entropy(model(xg), y).backward()
    return (x + eps * xg.grad.sign()).clamp(0, 1)


def fgsm_no_clip(model, x, y, eps):
    return x + eps * _input_grad(model, x, y).sign()


def fgsm_train_mode(model, x, y, eps):
    xg = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    return (x + eps * grad.sign()).clamp(0, 1)


def _pgd(project_each=True, l2_direction="per_image", l2_projection="scale", descend=False):
    def pgd(model, x, y, eps, alpha, steps, norm="linf"):
        x_adv = x.clone()
        for _ in range(steps):
            g = _input_grad(model, x_adv, y)
            if norm == "linf":
                step = g.sign()
            elif l2_direction == "sign":
                step = g.sign()
            elif l2_direction == "batch":
                step = g / g.norm()
            else:
                step = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            x_adv = x_adv + (-alpha if descend else alpha) * step
            if project_each:
                delta = x_adv - x
                if norm == "linf" or l2_projection == "clamp":
                    delta = delta.clamp(-eps, eps)
                else:
                    delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(
                        max=1).view(-1, 1, 1, 1)
                x_adv = x + delta
            x_adv = x_adv.clamp(0, 1)
        return x_adv
    return pgd


def trades_reversed(lc, la, y, beta):
    return F.cross_entropy(lc, y) + beta * F.kl_div(F.log_softmax(lc, 1), F.softmax(la, 1),
                                                    reduction="batchmean")


def trades_detached(lc, la, y, beta):
    return F.cross_entropy(lc, y) + beta * F.kl_div(F.log_softmax(la, 1),
                                                    F.softmax(lc, 1).detach(), reduction="batchmean")


def trades_class_mean(lc, la, y, beta):
    return F.cross_entropy(lc, y) + beta * F.kl_div(F.log_softmax(la, 1), F.softmax(lc, 1),
                                                    reduction="mean")


def trades_log_of_softmax(lc, la, y, beta):
    p, q = lc.softmax(1), la.softmax(1)
    return F.cross_entropy(lc, y) + beta * (p * (p.log() - q.log())).sum(1).mean()


def _ece(weighted=True, top=True, absolute=True, bins_offset=0):
    def ece(probs, labels, n_bins=15):
        conf, pred = probs.max(1)
        if not top:
            conf = probs.gather(1, labels[:, None]).squeeze(1)
        correct = (pred == labels).double()
        edges = torch.linspace(0, 1, n_bins + 1 + bins_offset, dtype=conf.dtype)
        index = torch.bucketize(conf, edges, right=True) - 1
        used = index.unique()
        total = 0.0
        for b in used:
            m = index == b
            gap = correct[m].mean() - conf[m].double().mean()
            total += (m.double().mean() if weighted else 1 / len(used)) * (gap.abs() if absolute
                                                                            else gap)
        return float(total)
    return ece


def ema_swapped(ema_model, model, decay):
    with torch.no_grad():
        for e, w in zip(list(ema_model.parameters()) + list(ema_model.buffers()),
                        list(model.parameters()) + list(model.buffers())):
            if e.is_floating_point():
                e.mul_(1 - decay).add_(w, alpha=decay)
            else:
                e.copy_(w)


def ema_parameters_only(ema_model, model, decay):
    with torch.no_grad():
        for e, w in zip(ema_model.parameters(), model.parameters()):
            e.mul_(decay).add_(w, alpha=1 - decay)


def ema_not_in_place(ema_model, model, decay):
    for e, w in zip(ema_model.parameters(), model.parameters()):
        e = decay * e + (1 - decay) * w          # rebinds the name only  # noqa: F841


def ema_lerps_integers(ema_model, model, decay):
    with torch.no_grad():
        for e, w in zip(list(ema_model.parameters()) + list(ema_model.buffers()),
                        list(model.parameters()) + list(model.buffers())):
            e.mul_(decay).add_(w * (1 - decay))


def _shortcut_x(block, x):
    return torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + x)


WRONG = [
    # 00
    (ex.check_normalize, [lambda x, m, s: (x - torch.tensor(m).view(1, -1, 1, 1).double())
                          * torch.tensor(s).view(1, -1, 1, 1).double()], "multiplied by std"),
    (ex.check_normalize, [lambda x, m, s: (x - torch.tensor(m).double())
                          / torch.tensor(s).double()], "last axis"),
    (ex.check_normalize, [lambda x, m, s: x.sub_(torch.tensor(m).view(1, -1, 1, 1)).div_(
        torch.tensor(s).view(1, -1, 1, 1))], "changed its input"),
    # 01
    (ex.check_basic_block_forward, [lambda b, x: torch.relu(b.bn2(b.conv2(torch.relu(b.bn1(
        b.conv1(x))))))], "skip connection is missing"),
    (ex.check_basic_block_forward, [lambda b, x: torch.relu(b.bn2(b.conv2(torch.relu(b.bn1(
        b.conv1(x)))))) + b.shortcut(x)], "after adding the shortcut"),
    (ex.check_basic_block_forward, [_shortcut_x], "raised RuntimeError"),
    # 02
    (ex.check_dropblock, [lambda p, k, h, w: p / k**2, SOLUTIONS["keep_mask"]],
     "(H * W) / ((H - k + 1) * (W - k + 1)) is missing"),
    (ex.check_dropblock, [SOLUTIONS["dropblock_gamma"],
                          lambda s, k: F.max_pool2d(F.pad(s, (k - 1,) * 4), k, 1)],
     "mask of dropped units"),
    (ex.check_dropblock, [SOLUTIONS["dropblock_gamma"], lambda s, k: 1 - F.max_pool2d(s, k, 1)],
     "returned shape"),
    # 03
    (ex.check_ema_update, [ema_swapped], "swapped"),
    (ex.check_ema_update, [ema_parameters_only], "floating-point buffer"),
    (ex.check_ema_update, [ema_not_in_place], "left ema_model unchanged"),
    (ex.check_ema_update, [ema_lerps_integers], "integer buffers"),
    # 04
    (ex.check_fgsm, [fgsm_gradient_value], "gradient's value"),
    (ex.check_fgsm, [fgsm_descends], "off by a sign"),
    (ex.check_fgsm, [fgsm_mode_not_restored], "left the model in eval mode"),
    (ex.check_fgsm, [fgsm_backward], "wrote gradients"),
    (ex.check_fgsm, [fgsm_no_clip], "outside [0, 1]"),
    (ex.check_fgsm, [fgsm_train_mode], "train mode"),
    (ex.check_pgd, [_pgd(project_each=False)], "outside the eps-ball"),
    (ex.check_pgd, [_pgd(descend=True)], "off by a sign"),
    (ex.check_pgd, [_pgd(l2_direction="sign")], "not the sign"),
    (ex.check_pgd, [_pgd(l2_direction="batch")], "per image"),
    (ex.check_pgd, [_pgd(l2_projection="clamp")], "does not bound the L2 norm"),
    # 05
    (ex.check_adversarial_loss, [lambda model, x, y, attack: F.cross_entropy(model(x), y)],
     "loss on the clean images"),
    (ex.check_adversarial_loss, [lambda model, x, y, attack: F.cross_entropy(
        model.eval()(attack(model, x, y)), y)], "eval mode"),
    (ex.check_adversarial_loss, [lambda model, x, y, attack: (F.cross_entropy(model(x), y) + F.cross_entropy(
        model(attack(model, x, y)), y)) / 2], "adversarial images only"),
    (ex.check_adversarial_loss, [lambda model, x, y, attack: F.cross_entropy(
        model(attack(model, x, y)), y).detach()], "without a gradient"),
    # 06
    (ex.check_trades_loss, [trades_reversed], "the KL is reversed"),
    (ex.check_trades_loss, [trades_detached], "do not detach the clean distribution"),
    (ex.check_trades_loss, [trades_class_mean], "averaged over classes"),
    (ex.check_trades_loss, [trades_log_of_softmax], "F.log_softmax"),
    # 07
    (ex.check_fisher_rao_distance, [lambda p, q: torch.acos((p * q).sqrt().sum(-1).clamp(max=1))],
     "factor 2 is missing"),
    (ex.check_fisher_rao_distance, [lambda p, q: 2 * torch.acos((p * q).sum(-1).clamp(max=1))],
     "square root"),
    (ex.check_fisher_rao_distance, [lambda p, q: 2 * torch.acos((p * q).sqrt().sum(-1) * (1 + 1e-15))],
     "NaN"),
    (ex.check_fisher_rao_distance, [lambda p, q: 2 * torch.acos((p * q).sqrt().sum(0).clamp(max=1))],
     "returned shape"),
    # 08
    (ex.check_ece, [_ece(weighted=False)], "share of the predictions"),
    (ex.check_ece, [_ece(top=False)], "top-label confidence"),
    (ex.check_ece, [_ece(absolute=False)], "absolute value"),
    (ex.check_ece, [_ece(bins_offset=-1)], "n_bins - 1 bins"),
    # 09
    (ex.check_straight_through, [lambda pre: pre], "zero everywhere"),
    (ex.check_straight_through, [lambda pre: (lambda x: x)], "returned x itself"),
    (ex.check_straight_through, [lambda pre: (lambda x: pre(x).detach())], "no gradient"),
    # 10
    (ex.check_corruption_errors, [lambda e, b: ({c: sum(x / y for x, y in zip(e[c], b[c])) / len(e[c])
                                                 for c in e}, 0.0)], "sum the errors over"),
    (ex.check_corruption_errors, [lambda e, b: ({c: sum(b[c]) / sum(e[c]) for c in e}, 0.0)],
     "upside down"),
    (ex.check_corruption_errors, [lambda e, b: ({c: sum(e[c]) / sum(b[c]) for c in e},
                                                sum(map(sum, e.values())) / sum(map(sum, b.values())))],
     "pooled"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("check, wrong, advice", WRONG,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(WRONG)])
def test_typical_wrong_answers_are_rejected_with_advice(check, wrong, advice, seed):
    with pytest.raises(ex.ExerciseFailed, match=re.escape(advice)):
        check(*wrong, seed=seed)


def test_every_check_rejects_at_least_two_wrong_answers():
    counts = {c: sum(c is check for check, _, _ in WRONG) for c in CHECKS}
    assert min(counts.values()) >= 2, counts


def test_use_falls_back_to_the_reference_until_the_check_passes(capsys):
    def corruption_errors(errors, baseline_errors):          # a learner's function, by its name
        ce = {c: sum(errors[c]) / sum(baseline_errors[c]) for c in errors}
        return ce, sum(ce.values()) / len(ce)

    ex._passed.pop("corruption_errors", None)
    fallback = ex.use(corruption_errors)
    assert fallback is not corruption_errors
    assert "has not passed its check yet" in capsys.readouterr().out
    ce, mce = fallback({"blur": [0.2, 0.4]}, {"blur": [0.4, 0.8]})
    assert ce == {"blur": pytest.approx(0.5)} and mce == pytest.approx(0.5)
    ex.check_corruption_errors(corruption_errors)
    assert ex.use(corruption_errors) is corruption_errors
    with pytest.raises(ex.ExerciseFailed):
        ex.check_corruption_errors(lambda e, b: ({c: 1.0 for c in e}, 1.0))
    with pytest.raises(ValueError, match="not an exercise of the course"):
        ex.use(len)
