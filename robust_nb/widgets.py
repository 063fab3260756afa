"""ipywidgets explorers used by the notebooks. The drawing logic is a plain function (testable
without a browser); the widget only wires sliders and dropdowns to it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attacks import default_kwargs, get_attack
from .data import check_images
from .evaluation import predict_logits
from .modes import model_device

EXPLORER_ATTACKS = ("fgsm", "pgd", "apgd", "square")     # the explorer's menu (fast enough)


def attack_example(model: nn.Module, image: Tensor, label: int | Tensor, attack: str = "pgd",
                   norm: str = "linf", eps: float = 0.1, steps: int = 10, seed: int = 0) -> dict:
    """Attack one image (C, H, W) with the registry attack ``attack`` at its default arguments
    (:func:`robust_nb.attacks.default_kwargs` for ``eps``, ``norm``, ``steps``) and return a dict
    with ``x``, ``x_adv`` (1, C, H, W), the clean and adversarial predictions and probabilities,
    and the figure (clean | adversarial | amplified perturbation) that :func:`attack_explorer`
    shows."""
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
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    axes[0].imshow(to_numpy_image(x[0]), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"clean: {clean_pred} ({probs[0, clean_pred]:.0%})")
    axes[1].imshow(to_numpy_image(x_adv[0]), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"{attack}: {adv_pred} ({probs[1, adv_pred]:.0%})",
                      color="red" if adv_pred != int(label) else "black")
    k = 0.5 / max(delta.abs().max().item(), 1e-12)
    axes[2].imshow(to_numpy_image(delta * k + 0.5), cmap="seismic", vmin=0, vmax=1)
    norm_value = delta.abs().max().item() if norm == "linf" else delta.norm().item()
    axes[2].set_title(f"perturbation x{k:.0f} ({norm} = {norm_value:.3f})", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return dict(x=x, x_adv=x_adv, clean_pred=clean_pred, adv_pred=adv_pred, probs=probs, figure=fig)


def attack_explorer(model: nn.Module, images: Tensor, labels: Tensor, eps_max: float = 0.3,
                    eps_max_l2: float = 3.0, steps: int = 10, attacks=EXPLORER_ATTACKS):
    """An interactive explorer: image index, attack, norm and eps sliders; shows the clean image,
    the adversarial image, the amplified perturbation and both predictions. The eps slider runs to
    ``eps_max`` for L-inf and ``eps_max_l2`` for L2. Returns the widget (display it as the last
    line of a cell)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    check_images(images, labels)
    index = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image")
    attack = widgets.Dropdown(options=list(attacks), value=list(attacks)[1 if len(attacks) > 1 else 0],
                              description="attack")
    norm = widgets.Dropdown(options=["linf", "l2"], value="linf", description="norm")
    eps = widgets.FloatSlider(value=eps_max / 3, min=0.0, max=eps_max, step=eps_max / 60,
                              description="eps", readout_format=".3f")
    out = widgets.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            norms = get_attack(attack.value).norms
            if norm.value not in norms:
                print(f"{attack.value} is defined for norm {' or '.join(norms)} only")
                return
            res = attack_example(model, images[index.value], labels[index.value], attack.value,
                                 norm.value, eps.value, steps)
            display(res["figure"])
            plt.close(res["figure"])

    def rescale(change):
        # An L2 ball needs a much larger radius than an L-inf ball for a visible effect.
        # max, step and value must reach the browser in ONE message: sent one by one, the
        # browser re-snaps its old value to the new max/step and sends it back, overwriting the
        # new value (eps stayed at the L-inf budget after switching to l2). hold_sync batches
        # the three into one update; hold_trait_notifications validates them together (value
        # may exceed the old max until max has changed) and runs `redraw` once they are set.
        top = eps_max if change["new"] == "linf" else eps_max_l2
        with eps.hold_sync(), eps.hold_trait_notifications():
            eps.max, eps.step, eps.value = top, top / 60, top / 3

    norm.observe(rescale, names="value")
    for w in (index, attack, norm, eps):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([index, attack]), widgets.HBox([norm, eps]), out])
