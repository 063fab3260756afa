"""The attack explorer's widgets: what the kernel sends to the browser when the norm changes."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("ipywidgets")

from robust_nb.widgets import attack_explorer  # noqa: E402


def record_updates(monkeypatch, widget) -> list:
    """The state updates the kernel sends to the browser through ``widget``'s comm, from now on."""
    messages = []
    monkeypatch.setattr(widget.comm, "send", lambda data=None, buffers=None, **_: messages.append(data),
                        raising=False)
    monkeypatch.setattr(widget.comm, "kernel", object(), raising=False)   # a comm with a kernel sends
    return messages


@pytest.fixture
def explorer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 10)).eval()
    x, y = torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 2])
    widget = attack_explorer(model, x, y, eps_max=0.3, eps_max_l2=1.5, steps=2,
                             attacks=("fgsm", "pgd"))
    norm, eps = widget.children[1].children
    return norm, eps


def test_switching_the_norm_sends_max_step_and_value_in_one_update(explorer, monkeypatch):
    norm, eps = explorer
    messages = record_updates(monkeypatch, eps)
    norm.value = "l2"
    assert (eps.max, eps.step, eps.value) == pytest.approx((1.5, 1.5 / 60, 0.5))
    updates = [m for m in messages if m.get("method") == "update"]
    # One message with all three: sent one by one, the browser re-snaps the old value after the
    # max update and its reply overwrites the new value (issue 15: eps stayed at the L-inf 0.1).
    assert len(updates) == 1, updates
    state = updates[0]["state"]
    assert {"max", "step", "value"} <= set(state)
    assert (state["max"], state["step"], state["value"]) == pytest.approx((1.5, 0.025, 0.5))


def test_switching_back_restores_the_linf_budget(explorer, monkeypatch):
    norm, eps = explorer
    norm.value = "l2"
    messages = record_updates(monkeypatch, eps)
    norm.value = "linf"        # the value 0.5 lies above the new max 0.3 until all three are set
    assert (eps.max, eps.step, eps.value) == pytest.approx((0.3, 0.005, 0.1))
    updates = [m for m in messages if m.get("method") == "update"]
    assert len(updates) == 1 and updates[0]["state"]["value"] == pytest.approx(0.1)
