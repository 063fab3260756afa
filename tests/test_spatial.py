"""rnb.spatial: the rotation-translation map (identity, torch.rot90, integer shifts, per-image
parameters, non-square images), the grid attack against a plain loop over the grid, the random
draws, and the errors."""

import math

import pytest
import torch

import robust_nb as rnb
from robust_nb.spatial import (
    SpatialResult,
    random_spatial,
    rotate_translate,
    spatial_grid_attack,
    transform_grid,
)

ANGLES = [-30.0, -10.0, 0.0, 15.0, 30.0]
SHIFTS = [-3.0, 0.0, 2.0]


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def few(trained_convnet):
    model, x, y = trained_convnet
    return model, x[:48], y[:48]


def test_exported():
    assert rnb.spatial.rotate_translate is rotate_translate


def test_identity_returns_the_image(images):
    assert torch.allclose(rotate_translate(images, 0.0), images, atol=1e-6)
    zeros = torch.zeros(len(images))
    out = rotate_translate(images, zeros, zeros, zeros)
    assert torch.allclose(out, images, atol=1e-6)
    rect = torch.rand(2, 1, 7, 10, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(rotate_translate(rect, 0), rect, atol=1e-6)


@pytest.mark.parametrize("side", [11, 12])
@pytest.mark.parametrize("angle,k", [(90, 1), (180, 2), (-90, -1), (270, 3)])
def test_quarter_turns_match_rot90_away_from_the_border(side, angle, k):
    x = torch.rand(3, 2, side, side, generator=torch.Generator().manual_seed(side))
    out = rotate_translate(x, angle)
    ref = torch.rot90(x, k, dims=(2, 3))
    assert torch.allclose(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)


def test_counter_clockwise_on_screen_and_non_square():
    # a bright pixel 3 px right of the centre of a 9 x 15 image goes 3 px up under +90 degrees
    x = torch.zeros(1, 1, 9, 15)
    x[0, 0, 4, 7 + 3] = 1.0
    out = rotate_translate(x, 90)[0, 0]
    row, col = divmod(out.argmax().item(), 15)
    assert (row, col) == (4 - 3, 7) and out[row, col] > 0.99


def test_integer_shifts_move_right_and_down_with_zero_fill(images):
    out = rotate_translate(images, 0, dx=2, dy=-1)        # 2 px right, 1 px up
    assert torch.allclose(out[..., :-1, 2:], images[..., 1:, :-2], atol=1e-6)
    assert out[..., :, :2].abs().max() < 1e-6 and out[..., -1, :].abs().max() < 1e-6


def test_per_image_parameters_equal_separate_calls(images):
    angle = torch.tensor([0.0, 12.5, -30.0, 45.0, 90.0, 7.0])
    dx = torch.tensor([0.0, 1.5, -3.0, 2.0, 0.0, 0.25])
    out = rotate_translate(images, angle, dx, 1.0)
    for i in range(len(images)):
        one = rotate_translate(images[i:i + 1], angle[i].item(), dx[i].item(), 1.0)
        assert torch.allclose(out[i:i + 1], one, atol=1e-6)


def test_contract_new_tensor_in_range_same_dtype(images):
    before = images.clone()
    out = rotate_translate(images.double(), 17.0, 1.3, -2.2)
    assert out.dtype == torch.float64 and out.shape == images.shape
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(images, before)


def test_transform_grid_order():
    g = transform_grid([-1.0, 1.0], torch.tensor([0.0, 2.0]))
    assert g.shape == (8, 3)
    assert g[0].tolist() == [-1.0, 0.0, 0.0] and g[1].tolist() == [-1.0, 0.0, 2.0]
    assert g[2].tolist() == [-1.0, 2.0, 0.0] and g[-1].tolist() == [1.0, 2.0, 2.0]


def _loop(model, x, y):
    """The grid by hand: one transformation at a time."""
    correct, loss = [], []
    with torch.no_grad():
        for a in ANGLES:
            for dx in SHIFTS:
                for dy in SHIFTS:
                    logits = model(rotate_translate(x, a, dx, dy))
                    correct.append(logits.argmax(1) == y)
                    loss.append(torch.nn.functional.cross_entropy(logits, y, reduction="none"))
    return torch.stack(correct, 1), torch.stack(loss, 1)


def test_grid_attack_against_a_plain_loop(few):
    model, x, y = few
    res = spatial_grid_attack(model, x, y, ANGLES, SHIFTS, batch_size=100)
    correct, loss = _loop(model, x, y)
    assert res.correct.shape == (len(x), len(ANGLES) * len(SHIFTS) ** 2)
    assert torch.equal(res.correct, correct)
    assert torch.allclose(res.loss, loss, atol=1e-4)
    assert torch.equal(res.robust, correct.all(1))                    # the minimum over the grid
    assert res.accuracy == correct.all(1).float().mean().item()
    per_point = res.accuracy_per_transform()
    assert all(res.accuracy <= a + 1e-9 for a in per_point.tolist())   # below every grid point
    assert torch.allclose(res.grid_accuracy().flatten(), correct.float().mean(0))
    # the identity is on the grid: its accuracy is the clean accuracy
    clean = rnb.evaluation.accuracy(model, x, y)
    ident = ANGLES.index(0.0) * len(SHIFTS) ** 2 + SHIFTS.index(0.0) * (len(SHIFTS) + 1)
    assert per_point[ident].item() == pytest.approx(clean)
    assert res.accuracy < clean                                        # rotations do hurt


def test_worst_transformation_is_the_references_choice(few):
    model, x, y = few
    res = spatial_grid_attack(model, x, y, ANGLES, SHIFTS)
    correct, loss = _loop(model, x, y)
    worst = res.worst
    for i in range(len(x)):
        wrong = ~correct[i]
        pool = loss[i][wrong] if wrong.any() else loss[i]
        assert loss[i, worst[i]].item() == pytest.approx(pool.max().item(), abs=1e-4)
        assert bool(correct[i, worst[i]]) == bool(correct[i].all())
    x_worst = res.worst_images(x)
    with torch.no_grad():
        pred = model(x_worst).argmax(1)
    assert torch.equal(pred == y, res.robust)
    assert torch.equal(res.worst_params, transform_grid(ANGLES, SHIFTS)[worst].float().double())


def test_batch_size_does_not_change_results(few):
    model, x, y = few
    a = spatial_grid_attack(model, x[:10], y[:10], ANGLES[:2], SHIFTS[:2], batch_size=3)
    b = spatial_grid_attack(model, x[:10], y[:10], ANGLES[:2], SHIFTS[:2])
    assert torch.equal(a.correct, b.correct)


def test_model_mode_restored_and_no_gradients(few):
    model, x, y = few
    model.zero_grad(set_to_none=True)               # the model is shared with other test files
    model.train()
    try:
        spatial_grid_attack(model, x[:4], y[:4], [0.0, 10.0], [0.0])
        assert model.training and all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_random_draws(few):
    model, x, y = few
    res = random_spatial(model, x, y, max_angle=30, max_shift=3, draws=8, seed=0)
    assert res.params.shape == (len(x), 8, 3)
    assert res.params[..., 0].abs().max() <= 30 and res.params[..., 1:].abs().max() <= 3
    assert res.params[..., 0].abs().max() > 20                  # draws cover the range
    assert res.accuracy <= res.mean_accuracy                     # worst of k <= average
    lo, hi = res.mean_interval()
    assert lo <= res.mean_accuracy <= hi
    again = random_spatial(model, x, y, 30, 3, draws=8, seed=0)
    other = random_spatial(model, x, y, 30, 3, draws=8, seed=1)
    assert torch.equal(res.params, again.params) and torch.equal(res.correct, again.correct)
    assert not torch.equal(res.params, other.params)
    # each draw is the transformation recorded in params
    with torch.no_grad():
        p = res.params[:, 3]
        pred = model(rotate_translate(x, p[:, 0], p[:, 1], p[:, 2])).argmax(1)
    assert torch.equal(pred == y, res.correct[:, 3])
    one = random_spatial(model, x, y, 30, 3, draws=1, seed=2)
    assert one.accuracy == one.mean_accuracy
    none = random_spatial(model, x, y, 0, 0, draws=2, seed=0)
    assert none.accuracy == pytest.approx(rnb.evaluation.accuracy(model, x, y))
    with pytest.raises(ValueError, match="grid"):
        res.grid_accuracy()


def test_mean_interval_is_conservative():
    # 4 images, 2 draws each, 5 of 8 right: the interval of a proportion 0.625 out of 4 images
    correct = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    res = SpatialResult(torch.zeros(4, 2, 3), correct, torch.zeros(4, 2))
    lo, hi = res.mean_interval()
    ref = rnb.stats.wilson_interval(2.5, 4)
    assert (lo, hi) == pytest.approx(ref) and hi - lo > 0.5
    assert res.accuracy == 0.5 and res.mean_accuracy == 0.625


@pytest.mark.parametrize("kwargs,match", [
    (dict(angle=torch.zeros(5)), "one value per image"),
    (dict(angle=torch.zeros(6, 1)), "one value per image"),
    (dict(angle=float("nan")), "finite number"),
    (dict(angle="10"), "finite number"),
    (dict(angle=0, dx=True), "finite number"),
])
def test_rotate_translate_errors(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rotate_translate(images, **kwargs)


def test_rotate_translate_rejects_bad_images():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        rotate_translate(torch.rand(3, 8, 8), 10)
    with pytest.raises(ValueError, match="floating point"):
        rotate_translate(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 10)


@pytest.mark.parametrize("angles,shifts,match", [
    ([], [0.0], "angles"),
    ([0.0, math.inf], [0.0], "angles"),
    ([0.0], "abc", "shifts"),
    (torch.zeros(2, 2), [0.0], "angles"),
    ([0.0], [True], "shifts"),
])
def test_grid_errors(few, angles, shifts, match):
    model, x, y = few
    with pytest.raises(ValueError, match=match):
        spatial_grid_attack(model, x[:2], y[:2], angles, shifts)


@pytest.mark.parametrize("kwargs,match", [
    (dict(draws=0), "draws"),
    (dict(draws=2.5), "draws"),
    (dict(max_angle=-1), "max_angle"),
    (dict(max_shift=math.nan), "max_shift"),
    (dict(batch_size=0), "batch_size"),
])
def test_random_errors(few, kwargs, match):
    model, x, y = few
    with pytest.raises(ValueError, match=match):
        random_spatial(model, x[:2], y[:2], **kwargs)


def test_labels_checked(few):
    model, x, y = few
    with pytest.raises(ValueError, match="one label per image"):
        spatial_grid_attack(model, x[:3], y[:2], [0.0], [0.0])
    with pytest.raises(ValueError, match="class indices"):
        random_spatial(model, x[:2], torch.tensor([0, 10]))
