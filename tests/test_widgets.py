"""The explorers' widgets: one eps slider per norm (nothing re-ranged for the browser to race
with), the text readouts (what a learner and the browser test read), and the DropBlock mask explorer."""

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("ipywidgets")

from robust_nb.models import dropblock_drop_rate  # noqa: E402
from robust_nb.widgets import (  # noqa: E402
    READOUT_CLASS,
    attack_example,
    attack_explorer,
    dropblock_example,
    dropblock_explorer,
)


def record_updates(monkeypatch, widget) -> list:
    """The state updates the kernel sends to the browser through ``widget``'s comm, from now on."""
    messages = []
    monkeypatch.setattr(widget.comm, "send", lambda data=None, buffers=None, **_: messages.append(data),
                        raising=False)
    monkeypatch.setattr(widget.comm, "kernel", object(), raising=False)   # a comm with a kernel sends
    return messages


def linear_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 10)).eval()


@pytest.fixture
def explorer_box():
    x, y = torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 2])
    return attack_explorer(linear_model(), x, y, eps_max=0.3, eps_max_l2=1.5, steps=2,
                           attacks=("fgsm", "pgd"))


def controls(box):
    """(index, attack, norm, {norm: eps slider}, readout) of an attack explorer."""
    (index, attack), (norm, eps_linf, eps_l2) = (b.children for b in box.children[:2])
    return index, attack, norm, {"linf": eps_linf, "l2": eps_l2}, box.children[2]


def shown(slider) -> bool:
    return slider.layout.display != "none"


def test_each_norm_has_its_own_eps_slider_and_choosing_a_norm_shows_it(explorer_box):
    _, _, norm, eps, readout = controls(explorer_box)
    assert [(s.max, s.step, s.value) for s in eps.values()] == [pytest.approx((0.3, 0.005, 0.1)),
                                                                pytest.approx((1.5, 0.025, 0.5))]
    assert shown(eps["linf"]) and not shown(eps["l2"])
    eps["linf"].value = 0.2
    norm.value = "l2"
    assert shown(eps["l2"]) and not shown(eps["linf"])
    assert readout.value.startswith("pgd, l2 budget eps = 0.500: ")
    norm.value = "linf"                                  # each slider keeps its own value
    assert shown(eps["linf"]) and readout.value.startswith("pgd, linf budget eps = 0.200: ")


def test_switching_the_norm_sends_no_range_or_value_to_the_eps_sliders(explorer_box, monkeypatch):
    # Re-ranging one slider raced with the browser, which sent back a value clamped or snapped to
    # the old range (issue 15: eps stayed at the L-inf value after choosing l2). Now a switch only
    # changes which slider is displayed.
    _, _, norm, eps, _ = controls(explorer_box)
    messages = {name: record_updates(monkeypatch, s) for name, s in eps.items()}
    norm.value = "l2"
    norm.value = "linf"
    assert all(not m for m in messages.values()), messages


def test_the_readout_follows_every_control(explorer_box):
    index, attack, norm, eps_sliders, readout = controls(explorer_box)
    assert READOUT_CLASS in readout._dom_classes
    assert readout.value.startswith("pgd, linf budget eps = 0.100: clean ")
    norm.value = "l2"
    assert readout.value.startswith("pgd, l2 budget eps = 0.500: clean ")
    assert "perturbation l2 = " in readout.value
    eps_sliders["l2"].value = 1.0
    assert readout.value.startswith("pgd, l2 budget eps = 1.000: ")
    before = readout.value
    index.value = 2
    assert readout.value != before and readout.value.startswith("pgd, l2 budget eps = 1.000: ")
    attack.value = "fgsm"
    assert readout.value == "fgsm is defined for norm linf only"
    norm.value = "linf"
    assert readout.value.startswith("fgsm, linf budget eps = 0.100: ")


def test_one_attack_per_change_and_none_for_a_float_echo(monkeypatch):
    import robust_nb.widgets as widgets_module

    calls = []
    real = widgets_module.attack_example
    def counted(*args, **kwargs):
        calls.append(args[3:6])                          # (attack, norm, eps)
        return real(*args, **kwargs)

    monkeypatch.setattr(widgets_module, "attack_example", counted)
    x, y = torch.rand(2, 1, 6, 6), torch.tensor([0, 1])
    box = attack_explorer(linear_model(), x, y, eps_max=0.9, eps_max_l2=3.0, steps=2, attacks=("pgd",))
    _, _, norm, eps, _ = controls(box)
    assert calls == [("pgd", "linf", eps["linf"].value)]
    eps["linf"].value = math.nextafter(eps["linf"].value, 1.0)    # a browser's float echo of the value
    eps["l2"].value = 2.0                                # the hidden slider: nothing to draw
    assert len(calls) == 1 and eps["linf"].value != calls[0][2], calls
    norm.value = "l2"                                    # one attack for the new norm and budget
    assert calls[1:] == [("pgd", "l2", 2.0)]
    eps["l2"].value = 1.5
    assert calls[2:] == [("pgd", "l2", 1.5)]
    matplotlib.pyplot.close("all")


def test_the_readout_says_when_an_attack_lacks_the_norm():
    x, y = torch.rand(2, 1, 6, 6), torch.tensor([0, 1])
    box = attack_explorer(linear_model(), x, y, steps=2, attacks=("pgd", "fgsm"))
    _, attack, norm, _, _ = controls(box)
    attack.value = "fgsm"
    norm.value = "l2"
    assert box.children[2].value == "fgsm is defined for norm linf only"


def test_attack_example_summary_matches_its_numbers():
    x, y = torch.rand(1, 6, 6), 3
    res = attack_example(linear_model(), x, y, "pgd", "l2", eps=0.8, steps=3)
    delta = (res["x_adv"] - res["x"]).norm().item()
    assert delta <= 0.8 + 1e-4
    assert res["summary"] == (
        f"pgd, l2 budget eps = 0.800: clean {res['clean_pred']} ({res['probs'][0].max():.0%}) → "
        f"adversarial {res['adv_pred']} ({res['probs'][1].max():.0%}), perturbation l2 = {delta:.3f}")
    assert res["figure"]._suptitle.get_text() == "pgd, l2 budget eps = 0.800"
    matplotlib.pyplot.close(res["figure"])


def feature_maps(c=8, side=12):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, c, side, side, generator=gen) * torch.arange(1, c + 1).view(1, c, 1, 1)


def test_dropblock_example_draws_the_mask_it_reports():
    fmap = feature_maps()
    res = dropblock_example(fmap, 0.3, 5, seed=1, n_channels=4)
    mask = res["mask"]
    assert mask.shape == fmap.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert res["dropped"] == pytest.approx(1 - mask.mean().item())
    assert res["expected"] == pytest.approx(dropblock_drop_rate(0.3, 5, 12, 12))
    assert res["channels"] == [7, 6, 5, 4]              # the most varied: the largest scale
    assert f"{res['dropped']:.1%} of 1,152 units dropped (expected {res['expected']:.1%})" in res["summary"]
    again = dropblock_example(fmap, 0.3, 5, seed=1, n_channels=4)
    assert torch.equal(again["mask"], mask)             # the seed fixes the mask
    assert not torch.equal(dropblock_example(fmap, 0.3, 5, seed=2)["mask"], mask)
    for r in (res, again):
        matplotlib.pyplot.close(r["figure"])


def test_dropblock_example_block_size_one_is_dropout_and_the_map_size_drops_channels():
    fmap = torch.ones(1, 64, 8, 8)
    one = dropblock_example(fmap, 0.3, 1, seed=0)
    assert one["expected"] == pytest.approx(0.3) and abs(one["dropped"] - 0.3) < 0.05
    whole = dropblock_example(fmap, 0.3, 8, seed=0)["mask"]
    per_channel = whole.flatten(2).mean(2)              # 0 or 1: whole channels kept or dropped
    assert set(per_channel.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=r"shape \(1, C, H, W\)"):
        dropblock_example(torch.ones(2, 3, 8, 8), 0.3, 3)
    matplotlib.pyplot.close("all")


def test_dropblock_explorer_sliders_redraw_and_update_the_readout():
    box = dropblock_explorer(feature_maps(), drop_prob=0.3, block_size=5)
    (prob, size, seed), readout = box.children[0].children, box.children[1]
    assert (size.min, size.max, size.value) == (1, 12, 5)
    assert READOUT_CLASS in readout._dom_classes
    assert readout.value.startswith("drop_prob = 0.30, block_size = 5: ")
    size.value = 1
    assert readout.value.startswith("drop_prob = 0.30, block_size = 1: ")
    prob.value = 0.0
    assert readout.value.startswith("drop_prob = 0.00, block_size = 1: 0.0% of 1,152 units dropped")
    prob.value = 0.5
    before = readout.value
    seed.value = 7
    assert readout.value != before and "block_size = 1" in readout.value
    matplotlib.pyplot.close("all")
