"""ipywidgets explorers used by the notebooks. The drawing logic is a plain function (testable
without a browser); the widget only wires sliders and dropdowns to it.

Each explorer shows, beside its figure, a one-line text readout of what the figure shows (an
``HTML`` widget with the CSS class ``rnb-readout``): a learner with a screen reader, a saved copy
and the browser test (``tests/e2e``) read the numbers from it instead of from pixels.
"""

from __future__ import annotations

import html

import torch
from torch import Tensor, nn

from .attacks import default_kwargs, get_attack
from .data import check_images
from .evaluation import predict_logits
from .modes import model_device

EXPLORER_ATTACKS = ("fgsm", "pgd", "apgd", "square")     # the explorer's menu (fast enough)
READOUT_CLASS = "rnb-readout"                             # CSS class of every explorer's text readout


def attack_summary(attack: str, norm: str, eps: float, clean_pred: int, clean_prob: float,
                   adv_pred: int, adv_prob: float, delta_norm: float) -> str:
    """The explorer's one-line readout (also the figure's title), e.g.
    ``pgd, l2 budget eps = 1.000: clean 7 (99%) → adversarial 3 (64%), perturbation l2 = 0.998``."""
    return (f"{attack}, {norm} budget eps = {eps:.3f}: clean {clean_pred} ({clean_prob:.0%}) → "
            f"adversarial {adv_pred} ({adv_prob:.0%}), perturbation {norm} = {delta_norm:.3f}")


def attack_example(model: nn.Module, image: Tensor, label: int | Tensor, attack: str = "pgd",
                   norm: str = "linf", eps: float = 0.1, steps: int = 10, seed: int = 0) -> dict:
    """Attack one image (C, H, W) with the registry attack ``attack`` at its default arguments
    (:func:`robust_nb.attacks.default_kwargs` for ``eps``, ``norm``, ``steps``) and return a dict
    with ``x``, ``x_adv`` (1, C, H, W), the clean and adversarial predictions and probabilities,
    ``summary`` (:func:`attack_summary`) and the figure (clean | adversarial | amplified
    perturbation, titled with the summary) that :func:`attack_explorer` shows."""
    import matplotlib.pyplot as plt

    from .plots import to_numpy_image

    spec = get_attack(attack)
    kwargs = default_kwargs(attack, eps, norm, steps)     # rejects a norm the attack lacks
    x = image.unsqueeze(0) if image.dim() == 3 else image
    check_images(x)
    device = model_device(model)
    y = torch.as_tensor([int(label)], device=device)
    x = x.to(device)
    x_adv = spec(model, x, y, seed=seed, **kwargs)
    probs = predict_logits(model, torch.cat([x, x_adv])).softmax(1).cpu()   # (2, K)
    clean_pred, adv_pred = probs.argmax(1).tolist()
    delta = (x_adv - x)[0].cpu()
    norm_value = delta.abs().max().item() if norm == "linf" else delta.norm().item()
    summary = attack_summary(attack, norm, eps, clean_pred, probs[0, clean_pred].item(), adv_pred,
                             probs[1, adv_pred].item(), norm_value)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 3.0))
    axes[0].imshow(to_numpy_image(x[0]), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"clean: {clean_pred} ({probs[0, clean_pred]:.0%})")
    axes[1].imshow(to_numpy_image(x_adv[0]), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"{attack}: {adv_pred} ({probs[1, adv_pred]:.0%})",
                      color="red" if adv_pred != int(label) else "black")
    k = 0.5 / max(delta.abs().max().item(), 1e-12)
    axes[2].imshow(to_numpy_image(delta * k + 0.5), cmap="seismic", vmin=0, vmax=1)
    axes[2].set_title(f"perturbation x{k:.0f} ({norm} = {norm_value:.3f})", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{attack}, {norm} budget eps = {eps:.3f}", fontsize=10)
    fig.tight_layout()
    return dict(x=x, x_adv=x_adv, clean_pred=clean_pred, adv_pred=adv_pred, probs=probs,
                summary=summary, figure=fig)


def _readout(text: str = ""):
    import ipywidgets as widgets

    readout = widgets.HTML(value=html.escape(text))
    readout.add_class(READOUT_CLASS)
    return readout


def attack_explorer(model: nn.Module, images: Tensor, labels: Tensor, eps_max: float = 0.3,
                    eps_max_l2: float = 3.0, steps: int = 10, attacks=EXPLORER_ATTACKS):
    """An interactive explorer: image index, attack, norm and eps sliders; shows the clean image,
    the adversarial image, the amplified perturbation and both predictions, with the same numbers
    as a text readout (:func:`attack_summary`). Each norm has its own eps slider, from 0 to
    ``eps_max`` for L-inf and to ``eps_max_l2`` for L2, starting at a third of it; choosing a norm
    shows its slider. Returns the widget (display it as the last line of a cell)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    check_images(images, labels)
    index = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image")
    attack = widgets.Dropdown(options=list(attacks), value=list(attacks)[1 if len(attacks) > 1 else 0],
                              description="attack")
    norm = widgets.Dropdown(options=["linf", "l2"], value="linf", description="norm")
    # One slider per norm (an L2 ball needs a much larger radius than an L-inf ball for a visible
    # effect). Re-ranging one slider in place raced with the browser, which clamps or re-snaps the
    # value to the range it still has and sends that back: after switching to l2, eps stayed at
    # the L-inf value (issue 15), also with max, step and value sent in one message.
    eps_sliders = {name: widgets.FloatSlider(value=top / 3, min=0.0, max=top, step=top / 60,
                                             description="eps", readout_format=".3f")
                   for name, top in (("linf", eps_max), ("l2", eps_max_l2))}
    eps_sliders["l2"].layout.display = "none"
    readout = _readout()
    out = widgets.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            norms = get_attack(attack.value).norms
            if norm.value not in norms:
                readout.value = html.escape(f"{attack.value} is defined for norm {' or '.join(norms)} only")
                return
            res = attack_example(model, images[index.value], labels[index.value], attack.value,
                                 norm.value, eps_sliders[norm.value].value, steps)
            display(res["figure"])
            plt.close(res["figure"])
            readout.value = html.escape(res["summary"])

    def switch_norm(change):
        for name, slider in eps_sliders.items():
            slider.layout.display = None if name == change["new"] else "none"
        redraw()

    def redraw_eps(change):
        # The browser snaps a displayed value to the slider's step in its own floating point and
        # sends it back (0.29999999999999993 -> 0.3): a change of a few ulps, not worth an attack;
        # nor is anything the hidden slider does.
        slider = change["owner"]
        if slider is eps_sliders[norm.value] and \
                abs(change["new"] - change["old"]) > 1e-9 * max(abs(change["old"]), slider.step):
            redraw()

    norm.observe(switch_norm, names="value")
    for slider in eps_sliders.values():
        slider.observe(redraw_eps, names="value")
    for w in (index, attack):
        w.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([index, attack]), widgets.HBox([norm, *eps_sliders.values()]),
                        readout, out])
    box.add_class("rnb-attack-explorer")
    return box


def _check_one_image_maps(fmap: Tensor) -> None:
    if fmap.dim() != 4 or fmap.shape[0] != 1:
        raise ValueError(f"expected the feature maps of one image, shape (1, C, H, W), "
                         f"got {tuple(fmap.shape)}")


def dropblock_summary(drop_prob: float, block_size: int, dropped: float, expected: float,
                      n_units: int, gamma: float) -> str:
    """The DropBlock explorer's one-line readout (also its figure's title)."""
    return (f"drop_prob = {drop_prob:.2f}, block_size = {block_size}: {dropped:.1%} of {n_units:,} units "
            f"dropped (expected {expected:.1%}), seed rate gamma = {gamma:.4f}")


def dropblock_example(fmap: Tensor, drop_prob: float, block_size: int, seed: int = 0,
                      n_channels: int = 6) -> dict:
    """One DropBlock mask (Ghiasi et al. 2018) on feature maps ``fmap`` (1, C, H, W), drawn with
    a generator seeded by ``seed``. Returns a dict with ``mask`` (1 = kept), ``dropped`` (the
    fraction of units this mask drops), ``expected`` (the exact expectation,
    :func:`robust_nb.models.dropblock_drop_rate`), ``gamma`` (the seed rate), ``channels`` (the
    ``n_channels`` most varied channels, the ones drawn), ``summary`` and the figure (those
    channels before and after the mask) that :func:`dropblock_explorer` shows."""
    import matplotlib.pyplot as plt

    from .models import dropblock_drop_rate, dropblock_gamma, dropblock_mask

    _check_one_image_maps(fmap)
    _, c, h, w = fmap.shape
    gen = torch.Generator(device=fmap.device).manual_seed(seed)
    mask = dropblock_mask(fmap, drop_prob, block_size, generator=gen)          # (1, C, H, W)
    dropped = 1.0 - mask.mean().item()
    expected = dropblock_drop_rate(drop_prob, block_size, h, w)
    gamma = dropblock_gamma(drop_prob, block_size, h, w)
    summary = dropblock_summary(drop_prob, block_size, dropped, expected, mask.numel(), gamma)
    channels = fmap[0].flatten(1).std(1).topk(min(n_channels, c)).indices.tolist()
    fig, axes = plt.subplots(2, len(channels), figsize=(1.4 * len(channels) + 0.8, 3.4), squeeze=False)
    for col, ch in enumerate(channels):
        lo, hi = fmap[0, ch].min().item(), fmap[0, ch].max().item()   # LeakyReLU maps can be negative
        for row, maps in enumerate((fmap, fmap * mask)):
            axes[row, col].imshow(maps[0, ch].cpu(), cmap="magma", vmin=min(lo, 0.0), vmax=max(hi, 1e-6))
            axes[row, col].set_xticks([]), axes[row, col].set_yticks([])
        axes[0, col].set_title(f"channel {ch}", fontsize=8)
    axes[0, 0].set_ylabel("feature map")
    axes[1, 0].set_ylabel("DropBlock")
    fig.suptitle(f"drop_prob = {drop_prob:.2f}, block_size = {block_size}: {dropped:.1%} dropped "
                 f"(expected {expected:.1%})", fontsize=10)
    fig.tight_layout()
    return dict(mask=mask, dropped=dropped, expected=expected, gamma=gamma, channels=channels,
                summary=summary, figure=fig)


def dropblock_explorer(fmap: Tensor, drop_prob: float = 0.3, block_size: int = 5,
                       drop_prob_max: float = 0.6, seed: int = 0, n_channels: int = 6):
    """An interactive DropBlock mask explorer over feature maps ``fmap`` (1, C, H, W): sliders for
    ``drop_prob`` (0 to ``drop_prob_max``), ``block_size`` (1 to the map's smaller side; the
    largest drops whole channels) and the mask's seed; shows the ``n_channels`` most varied
    channels before and after the mask (:func:`dropblock_example`) and, as text, the fraction
    dropped against its exact expectation. Returns the widget."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    _check_one_image_maps(fmap)
    side = min(fmap.shape[-2:])
    prob = widgets.FloatSlider(value=drop_prob, min=0.0, max=drop_prob_max, step=0.01,
                               description="drop_prob", readout_format=".2f")
    size = widgets.IntSlider(value=min(block_size, side), min=1, max=side, description="block_size")
    seed_slider = widgets.IntSlider(value=seed, min=0, max=99, description="mask seed")
    readout = _readout()
    out = widgets.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            res = dropblock_example(fmap, prob.value, size.value, seed_slider.value, n_channels)
            display(res["figure"])
            plt.close(res["figure"])
            readout.value = html.escape(res["summary"])

    for w in (prob, size, seed_slider):
        w.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([prob, size, seed_slider]), readout, out])
    box.add_class("rnb-dropblock-explorer")
    return box
