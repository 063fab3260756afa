"""DropBlock (Ghiasi et al. 2018, Algorithm 1): the paper's gamma, block geometry, statistics,
rescaling, torchvision.ops.drop_block2d as a second implementation, and the linear schedule."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import drop_block2d as tv_drop_block2d

from robust_nb.models import (
    DropBlock2d,
    DropBlockSchedule,
    blocks_from_seeds,
    build_model,
    drop_block2d,
    dropblock_drop_rate,
    dropblock_gamma,
    dropblock_mask,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gamma_is_the_papers_formula():
    # Eq. (1): gamma = (1 - keep_prob) / block_size^2 * feat_size^2 / (feat_size - block_size + 1)^2
    for keep_prob, block_size, feat_size in ((0.9, 7, 14), (0.9, 7, 7), (0.75, 3, 8), (0.95, 5, 16)):
        paper = (1 - keep_prob) / block_size**2 * feat_size**2 / (feat_size - block_size + 1) ** 2
        assert dropblock_gamma(1 - keep_prob, block_size, feat_size, feat_size) == pytest.approx(paper)
    assert dropblock_gamma(0.1, 3, 8, 8) == pytest.approx(0.1 / 9 * 64 / 36)
    assert dropblock_gamma(0.2, 9, 4, 4) == pytest.approx(0.2)        # block clamped to the map
    assert dropblock_gamma(0.1, 7, 7, 7) == pytest.approx(0.1)       # one position: gamma = p


def test_block_growth_matches_torchvisions_padding_and_pooling_for_odd_sizes():
    torch.manual_seed(0)
    for k in (1, 3, 5):
        seeds = (torch.rand(2, 3, 12 - k + 1, 12 - k + 1) < 0.05).float()
        # torchvision: pad by k//2, then a k x k max-pool with padding k//2 (blocks centred on seeds).
        ref = F.max_pool2d(F.pad(seeds, [k // 2] * 4), kernel_size=k, stride=1, padding=k // 2)
        assert torch.equal(blocks_from_seeds(seeds, k), ref)


def test_a_single_seed_drops_exactly_one_whole_block():
    seeds = torch.zeros(1, 1, 6, 6)
    seeds[0, 0, 2, 4] = 1.0
    blocks = blocks_from_seeds(seeds, 4)                      # 9 x 9 map, anchor at top-left
    expected = torch.zeros(1, 1, 9, 9)
    expected[0, 0, 2:6, 4:8] = 1.0
    assert torch.equal(blocks, expected)


def test_dropped_units_are_unions_of_whole_blocks_inside_the_map():
    x = torch.ones(8, 16, 12, 12)
    for k in (2, 3, 5):
        dropped = 1.0 - dropblock_mask(x, 0.3, k, generator=_gen(k))
        # Anchors whose whole k x k block is dropped (an erosion), grown back (a dilation): if every
        # dropped unit belongs to a whole in-map block, the opening reproduces the dropped set.
        anchors = -F.max_pool2d(-dropped, kernel_size=k, stride=1)   # (B, C, H-k+1, W-k+1)
        assert torch.equal(blocks_from_seeds(anchors, k), dropped)
        assert dropped.sum() > 0


def test_masks_are_drawn_per_sample_and_per_channel():
    mask = dropblock_mask(torch.ones(4, 32, 10, 10), 0.3, 3, generator=_gen())
    per_channel = mask.flatten(2)                              # (B, C, H*W)
    assert not torch.equal(per_channel[:, 0], per_channel[:, 1])
    assert not torch.equal(per_channel[0], per_channel[1])
    distinct = {tuple(m.tolist()) for m in per_channel.flatten(0, 1)}
    assert len(distinct) > 100


def _expected_drop_map(p, k, h, w):
    """P(unit (i, j) dropped) = 1 - (1 - gamma)^n(i, j), n = number of in-map blocks covering it."""
    gamma = dropblock_gamma(p, k, h, w)
    covering = blocks_from_seeds(torch.ones(1, 1, h - k + 1, w - k + 1), k)   # 0/1 map, not counts
    counts = F.conv2d(F.pad(torch.ones(1, 1, h - k + 1, w - k + 1), (k - 1,) * 4),
                      torch.ones(1, 1, k, k))                                 # n(i, j)
    assert torch.equal(covering, (counts > 0).float())
    return 1 - (1 - gamma) ** counts[0, 0]


@pytest.mark.parametrize("p,k,size", [(0.1, 3, 8), (0.3, 5, 14), (0.2, 7, 7)])
def test_dropped_fraction_matches_the_exact_expectation_and_torchvision(p, k, size):
    n = 4000                                                     # maps sampled (B * C)
    x = torch.ones(n // 40, 40, size, size)
    ours = 1.0 - dropblock_mask(x, p, k, generator=_gen(1))
    torch.manual_seed(1)
    theirs = (tv_drop_block2d(x, p, k) == 0).float()           # torchvision: dropped units are 0
    expected = _expected_drop_map(p, k, size, size)             # (H, W)
    for dropped in (ours, theirs):
        freq = dropped.mean(dim=(0, 1))                          # (H, W) per-position frequency
        tol = 5 * torch.sqrt(expected * (1 - expected) / n) + 1e-3
        assert ((freq - expected).abs() <= tol).all()
        overall = dropped.mean().item()
        assert overall == pytest.approx(expected.mean().item(), abs=5 * math.sqrt(0.25 / n / size))
    # Overlaps and the border make the realised fraction a bit lower than the target p.
    assert 0.5 * p < expected.mean().item() <= p
    assert dropblock_drop_rate(p, k, size, size) == pytest.approx(expected.mean().item(), rel=1e-5)


def test_kept_units_are_rescaled_by_count_over_ones():
    x = torch.rand(6, 8, 10, 10)
    torch.manual_seed(3)
    out = drop_block2d(x, 0.25, 3, generator=_gen(3))
    mask = dropblock_mask(x, 0.25, 3, generator=_gen(3))
    scale = mask.numel() / mask.sum()
    torch.testing.assert_close(out, x * mask * scale)
    ones = drop_block2d(torch.ones(6, 8, 10, 10), 0.25, 3, generator=_gen(3))
    assert ones.mean().item() == pytest.approx(1.0, rel=1e-5)   # the sum is preserved exactly
    values = ones.unique()
    assert len(values) == 2 and values[0] == 0.0 and values[1].item() == pytest.approx(scale.item())


def test_identity_in_eval_mode_and_at_zero_probability_and_gradients_flow_through_the_mask():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    layer = DropBlock2d(0.3, 3)
    assert layer.eval()(x) is x
    assert DropBlock2d(0.0, 3).train()(x) is x
    layer.train()
    torch.manual_seed(0)
    out = layer(x)
    out.sum().backward()
    kept = out.detach() != 0
    assert (x.grad[kept] > 0).all() and (x.grad[~kept] == 0).all()


def test_a_block_larger_than_the_map_drops_whole_channels_with_probability_p():
    mask = dropblock_mask(torch.ones(200, 50, 4, 4), 0.3, 7, generator=_gen(2))
    per_channel = mask.mean(dim=(2, 3))                          # (B, C): each 0 or 1
    assert set(per_channel.unique().tolist()) <= {0.0, 1.0}
    assert (1 - per_channel).mean().item() == pytest.approx(0.3, abs=0.02)


def test_same_generator_seed_gives_the_same_mask():
    x = torch.ones(2, 3, 9, 9)
    assert torch.equal(dropblock_mask(x, 0.2, 3, generator=_gen(5)),
                       dropblock_mask(x, 0.2, 3, generator=_gen(5)))


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="drop_prob"):
        DropBlock2d(1.2, 3)
    with pytest.raises(ValueError, match="block_size"):
        DropBlock2d(0.1, 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        drop_block2d(torch.ones(3, 8, 8), 0.1, 3)
    with pytest.raises(ValueError, match="no DropBlock2d"):
        DropBlockSchedule(build_model("convnet", filters=(4, 4, 4, 4)), 0.1, 5)


def test_schedule_ramps_every_dropblock_linearly_from_zero_to_the_target():
    model = build_model("convnet", 10, 1, "dropblock", filters=(4, 4, 4, 4), drop_prob=0.2)
    schedule = DropBlockSchedule(model, drop_prob=0.2, epochs=5)
    layers = [m for m in model.modules() if isinstance(m, DropBlock2d)]
    assert len(layers) == 2 == len(schedule.layers)
    seen = []
    for epoch in range(7):
        schedule(epoch)
        assert len({m.drop_prob for m in layers}) == 1
        seen.append(layers[0].drop_prob)
    assert seen == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert DropBlockSchedule(model, 0.2, epochs=1).value(0) == 0.2
