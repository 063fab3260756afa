"""Architectures: parameter counts against the papers / reference code, torchvision number-for-number,
forward and backward of every model x regularization, Normalize, FLOPs and bad input."""

from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

import robust_nb as rnb
from robust_nb.models import (
    DropBlock2d,
    Normalize,
    SqueezeExcitation,
    available_models,
    build_model,
    count_flops,
    count_parameters,
    feature_maps,
    feature_shapes,
    for_config,
    layer_gradient_norms,
    se_gates,
    summarize,
)
from robust_nb.models.convnet import ConvNet, convnet_widths

# Standard CIFAR definitions, 3 input channels, 10 classes. ResNet-18/34/50 as in
# kuangliu/pytorch-cifar; PreAct-ResNet-18 with the final BN (locuslab/fast_adversarial);
# WRN-28-10 / WRN-34-10 as in the TRADES code and the WRN paper (36.5M / 46.2M).
KNOWN_COUNTS = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "preact_resnet18": 11_172_170,
    "wrn_16_4": 2_748_890,
    "wrn_28_10": 36_479_194,
    "wrn_34_10": 46_160_474,
}


def _count_on_meta(name, **kw):
    # Building on the meta device allocates nothing, so even WRN-34-10 costs milliseconds.
    with torch.device("meta"):
        return count_parameters(build_model(name, **kw))


@pytest.mark.parametrize("name,expected", sorted(KNOWN_COUNTS.items()))
def test_parameter_counts_match_the_standard_definitions(name, expected):
    assert _count_on_meta(name, num_classes=10, in_channels=3) == expected


def test_se_resnet18_adds_exactly_the_excitation_weights():
    # Hu et al.: per block FC(C, C/16) and FC(C/16, C) with biases; two blocks per stage.
    extra = sum(2 * (c * (c // 16) + c // 16 + (c // 16) * c + c) for c in (64, 128, 256, 512))
    assert extra == 89_080
    assert _count_on_meta("se_resnet18") == KNOWN_COUNTS["resnet18"] + extra


def test_imagenet_stem_resnets_match_torchvision_number_for_number():
    for name, tv in (("resnet18", torchvision.models.resnet18),
                     ("resnet50", torchvision.models.resnet50)):
        torch.manual_seed(0)
        ref = tv(num_classes=7).eval()
        ours = build_model(name, num_classes=7, in_channels=3, stem="imagenet",
                           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()
        ours_sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("normalize.")}
        ref_sd = ref.state_dict()
        assert len(ours_sd) == len(ref_sd)
        # Same modules in the same order: map torchvision's tensors onto ours one by one.
        mapped = {}
        for (k_ours, v_ours), (k_ref, v_ref) in zip(ours_sd.items(), ref_sd.items()):
            assert v_ours.shape == v_ref.shape, (k_ours, k_ref)
            mapped[k_ours] = v_ref
        ours.load_state_dict(mapped, strict=False)
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", available_models())
def test_every_model_and_regularization_runs_forward_and_backward(name):
    small = dict(filters=(4, 8, 8, 8)) if name == "convnet" else dict(width=1 / 16)
    for regularization in (None, "dropout", "dropblock"):
        for channels, size in ((1, 28), (3, 32)):
            torch.manual_seed(0)
            model = build_model(name, num_classes=10, in_channels=channels,
                                regularization=regularization, **small)
            x = torch.rand(2, channels, size, size)
            out = model(x)
            assert out.shape == (2, 10) and torch.isfinite(out).all()
            out.logsumexp(1).sum().backward()
            grads = [p.grad for p in model.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            n_reg = sum(isinstance(m, (nn.Dropout, DropBlock2d)) for m in model.modules())
            assert n_reg == (0 if regularization is None else 2)


def test_regularization_is_identity_in_eval_mode():
    torch.manual_seed(0)
    plain = build_model("resnet18", 10, 1, width=0.125).eval()
    x = torch.rand(4, 1, 28, 28)
    for regularization in ("dropout", "dropblock"):
        reg = build_model("resnet18", 10, 1, regularization, width=0.125, drop_prob=0.5)
        reg.load_state_dict(plain.state_dict())   # Dropout / DropBlock hold no state
        torch.testing.assert_close(reg.eval()(x), plain(x))
        reg.train()
        assert not torch.allclose(reg(x), reg(x))  # training mode draws fresh masks


def test_normalize_is_per_channel_and_holds_buffers_not_parameters():
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    assert list(norm.parameters()) == [] and set(norm.state_dict()) == {"mean", "std"}
    with pytest.raises(ValueError, match="shape"):
        norm(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.0,), (0.0,))
    with pytest.raises(ValueError, match="same length"):
        Normalize((0.0, 0.0), (1.0,))


def test_every_model_starts_with_normalize_holding_the_dataset_statistics():
    for name in ("convnet", "resnet18", "preact_resnet18", "wrn_16_4", "se_resnet18"):
        model = build_model(name, 10, 1, mean=(0.13,), std=(0.31,),
                            **({"filters": (4, 8, 8, 8)} if name == "convnet" else {"width": 0.25}))
        first = next(model.children())
        assert isinstance(first, Normalize)
        assert first.mean.item() == pytest.approx(0.13) and first.std.item() == pytest.approx(0.31)


def test_bad_names_and_arguments_raise_clear_value_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*convnet"):
        build_model("resnet19")
    with pytest.raises(ValueError, match="unknown regularization 'dropconnect'"):
        build_model("resnet18", regularization="dropconnect")
    with pytest.raises(ValueError, match="6n\\+4"):
        build_model("wrn_27_10")
    with pytest.raises(ValueError, match="4 positive filter counts"):
        build_model("convnet", filters=(16, 32, 64))
    with pytest.raises(ValueError, match="filters applies to the convnet only"):
        build_model("resnet18", filters=(16, 32, 64, 128))
    with pytest.raises(ValueError, match="unknown stem"):
        build_model("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="drop_prob"):
        build_model("resnet18", regularization="dropout", drop_prob=1.5)
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", width=0.0)


def test_width_scales_every_stage_and_plain_networks_drop_all_shortcuts():
    shapes = feature_shapes(build_model("resnet18", 10, 3, width=0.25), (3, 32, 32))
    assert [shapes[f"stages.{i}"] for i in range(4)] == [(16, 32, 32), (32, 16, 16),
                                                         (64, 8, 8), (128, 4, 4)]
    plain = build_model("resnet18", 10, 3, width=0.25, residual=False)
    assert all(not block.residual for stage in plain.stages for block in stage)
    # A plain net has no projection shortcuts: 3 stages x (1x1 conv + BN) fewer parameters.
    residual = build_model("resnet18", 10, 3, width=0.25)
    projections = sum((cin * cout + 2 * cout) for cin, cout in ((16, 32), (32, 64), (64, 128)))
    assert count_parameters(residual) - count_parameters(plain) == projections
    imagenet = feature_shapes(build_model("resnet18", 10, 3, width=0.25, stem="imagenet"),
                              (3, 224, 224))
    assert imagenet["stem"] == (16, 56, 56) and imagenet["stages.3"] == (128, 7, 7)


def test_flop_count_matches_a_hand_count_of_the_convnet():
    f1, f2, f3, f4 = 4, 8, 16, 32
    model = build_model("convnet", 10, 1, filters=(f1, f2, f3, f4))
    macs = (28 * 28 * 9 * (1 * f1 + f1 * f2)        # stage1 at 28x28
            + 14 * 14 * 9 * (f2 * f2 + f2 * f3)     # stage2 at 14x14
            + 7 * 7 * 9 * (f3 * f3 + f3 * f4)       # stage3 at 7x7
            + 3 * 3 * 1 * f4 * 10)                  # 1x1 head at 3x3
    assert count_flops(model, (1, 28, 28)) == 2 * macs
    assert model.training  # mode restored


def test_squeeze_excitation_rescales_channels_by_a_sigmoid_gate():
    torch.manual_seed(0)
    se = SqueezeExcitation(32, reduction=16)
    x = torch.randn(3, 32, 5, 5)
    s = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3))))))
    torch.testing.assert_close(se(x), x * s[:, :, None, None])
    assert se.fc1.out_features == 2


def test_for_config_uses_the_profile_sizes_and_the_dataset_statistics():
    cfg = rnb.setup("quick", verbose=False)
    data = SimpleNamespace(num_classes=7, in_channels=1, mean=(0.2,), std=(0.4,))
    model = for_config(cfg, data)
    assert type(model).__name__ == "ConvNet"
    f1, f2, f3, f4 = convnet_widths(cfg.convnet_filters)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [f1, f2, f2, f3, f3, f4, 7]
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == bool(getattr(cfg, "convnet_batchnorm", False))
    assert model.normalize.mean.item() == pytest.approx(0.2)
    resnet = for_config(cfg, data, name=cfg.resnet, regularization="dropblock", drop_prob=0.2)
    assert resnet.fc.out_features == 7
    assert resnet.stages[0][0].conv1.out_channels == round(64 * cfg.width)
    assert [m.drop_prob for m in resnet.modules() if isinstance(m, DropBlock2d)] == [0.2, 0.2]


def test_summarize_on_the_meta_device_matches_a_real_model():
    real = build_model("wrn_16_4", 10, 1, width=0.25)
    assert summarize("wrn_16_4", (1, 28, 28), width=0.25) == {
        "model": "wrn_16_4", "params": count_parameters(real), "flops": count_flops(real, (1, 28, 28))}


def test_layer_gradient_norms_match_autograd_and_leave_grads_and_mode_alone():
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 1, width=0.125).eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    norms = layer_gradient_norms(model, x, y)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert len(norms) == 18 and list(norms)[0] == "stem.0" and list(norms)[-1] == "fc"
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    assert norms["fc"] == pytest.approx(model.fc.weight.grad.norm().item(), rel=1e-4)
    assert norms["stem.0"] == pytest.approx(model.stem[0].weight.grad.norm().item(), rel=1e-4)


def test_se_gates_and_feature_maps_read_the_right_tensors():
    torch.manual_seed(0)
    model = build_model("se_resnet18", 10, 1, width=0.25).eval()
    x = torch.rand(3, 1, 28, 28)
    gates = se_gates(model, x)
    assert len(gates) == 8 and gates["stages.3.1.se"].shape == (3, 128)
    feats = feature_maps(model, x, "stages.3.0")                  # input of the last block
    block = model.stages[3][1]
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(feats)))))
        expected = torch.sigmoid(block.se.fc2(torch.relu(block.se.fc1(branch.mean((2, 3))))))
    torch.testing.assert_close(gates["stages.3.1.se"], expected)
    with pytest.raises(ValueError, match="squeeze-and-excitation"):
        se_gates(build_model("resnet18", width=0.125), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no submodule"):
        feature_maps(model, x, "stage9")


# -- the ConvNet: the self-study course's all-convolutional net ---------------------------------

def _forward_trace(model, x):
    """(kind, in_channels, out_channels, kernel) of every conv / pool / regularizer, in call order."""
    trace, hooks = [], []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            info = ("conv", m.in_channels, m.out_channels, m.kernel_size[0])
        elif isinstance(m, nn.AvgPool2d):
            info = ("avgpool", m.kernel_size)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            info = ("global-avgpool",)
        elif isinstance(m, (nn.Dropout, DropBlock2d)):
            info = (type(m).__name__,)
        else:
            continue
        hooks.append(m.register_forward_hook(lambda *_, info=info: trace.append(info)))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return trace


def test_convnet_layout_is_two_3x3_convs_per_stage_pools_and_a_1x1_head():
    model = build_model("convnet", 10, 3)                       # f = 64, the course's CIFAR size
    assert [name for name, _ in model.named_children()] == [
        "normalize", "stage1", "pool1", "stage2", "pool2", "stage3", "pool3", "head", "pool"]
    conv = lambda cin, cout, k=3: ("conv", cin, cout, k)       # noqa: E731
    assert _forward_trace(model, torch.rand(1, 3, 32, 32)) == [
        conv(3, 64), conv(64, 128), ("avgpool", 2),
        conv(128, 128), conv(128, 256), ("avgpool", 2),
        conv(256, 256), conv(256, 512), ("avgpool", 2),
        conv(512, 10, 1), ("global-avgpool",)]
    hidden = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not model.head]
    assert all(c.padding == (1, 1) and c.stride == (1, 1) and c.bias is not None for c in hidden)
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 6 and all(a.negative_slope == 0.2 for a in acts)
    assert not any(isinstance(m, (nn.Linear, nn.ReLU, nn.MaxPool2d)) for m in model.modules())
    # Each LeakyReLU follows its conv directly, inside the stage.
    for stage in (model.stage1, model.stage2, model.stage3):
        blocks = [b for b in stage if not isinstance(b, nn.Identity)]
        assert len(blocks) == 2
        assert all(isinstance(b[0], nn.Conv2d) and isinstance(b[-1], nn.LeakyReLU) for b in blocks)


def test_convnet_parameter_count_for_f64_on_cifar_by_hand():
    # 3x3 convs (weights + biases): 3->64, 64->128 | 128->128, 128->256 | 256->256, 256->512;
    # the 1x1 head 512->10 (+ bias).
    convs = [(3, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)]
    hand = sum(9 * cin * cout + cout for cin, cout in convs) + 512 * 10 + 10
    assert hand == (1_728 + 64) + (73_728 + 128) + (147_456 + 128) + (294_912 + 256) \
        + (589_824 + 256) + (1_179_648 + 512) + 5_130 == 2_293_770
    assert _count_on_meta("convnet", num_classes=10, in_channels=3) == 2_293_770
    assert count_parameters(ConvNet(10, 3, filters=64)) == 2_293_770
    # BatchNorm: the conv biases go, each BN adds a scale and a shift per channel.
    with_bn = hand + sum(cout for _, cout in convs)
    assert with_bn == 2_295_114
    assert _count_on_meta("convnet", num_classes=10, in_channels=3, batchnorm=True) == with_bn
    # the quick profile's size: f = 8 on 1x28x28 digits
    assert count_parameters(ConvNet(10, 1, filters=8)) == sum(
        9 * cin * cout + cout for cin, cout in
        [(1, 8), (8, 16), (16, 16), (16, 32), (32, 32), (32, 64)]) + 64 * 10 + 10 == 36_602


def test_convnet_has_no_batchnorm_by_default_and_batchnorm_is_an_option():
    torch.manual_seed(0)
    plain = build_model("convnet", 10, 1, filters=8)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    # Without BN, a sample's logits in training mode do not depend on the rest of the batch.
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(plain.train()(x)[:2], plain(x[:2]), rtol=1e-5, atol=1e-6)

    torch.manual_seed(0)
    bn = build_model("convnet", 10, 1, filters=8, batchnorm=True)
    norms = [m for m in bn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [8, 16, 16, 32, 32, 64]
    hidden = [m for m in bn.modules() if isinstance(m, nn.Conv2d) and m is not bn.head]
    assert all(c.bias is None for c in hidden) and bn.head.bias is not None
    for block in list(bn.stage1) + list(bn.stage2) + list(bn.stage3):      # conv -> BN -> act
        if not isinstance(block, nn.Identity):
            assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU]
    assert not torch.allclose(bn.train()(x)[:2], bn(x[:2]))              # batch statistics
    with pytest.raises(ValueError, match="batchnorm applies to the convnet only"):
        build_model("resnet18", batchnorm=True)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_convnet_feature_and_output_shapes(channels, size):
    model = build_model("convnet", 10, channels, filters=(8, 16, 32, 64))
    s2, s4, s8 = size // 2, size // 4, size // 8                   # pools floor: 28 -> 14 -> 7 -> 3
    assert feature_shapes(model, (channels, size, size)) == {
        "normalize": (channels, size, size),
        "stage1": (16, size, size), "pool1": (16, s2, s2),
        "stage2": (32, s2, s2), "pool2": (32, s4, s4),
        "stage3": (64, s4, s4), "pool3": (64, s8, s8),
        "head": (10, s8, s8), "pool": (10, 1, 1)}
    out = model(torch.rand(5, channels, size, size))
    assert out.shape == (5, 10) and torch.isfinite(out).all()


def test_convnet_filters_take_a_base_width_or_four_widths():
    assert convnet_widths(8) == (8, 16, 32, 64) and convnet_widths(64) == (64, 128, 256, 512)
    assert convnet_widths((8, 16, 16, 32)) == (8, 16, 16, 32)
    assert ConvNet(10, 1, filters=8).widths == ConvNet(10, 1, filters=(8, 16, 32, 64)).widths
    assert build_model("convnet").widths == (64, 128, 256, 512)
    for bad in ((16, 32, 64), (8, 16, 0, 32), 0, -8, (8, 16, 32, 64.5), True):
        with pytest.raises(ValueError, match="filter counts|base width|int"):
            ConvNet(10, 1, filters=bad)


@pytest.mark.parametrize("regularization,layer", [("dropout", nn.Dropout),
                                                   ("dropblock", DropBlock2d)])
def test_convnet_regularizes_after_the_last_two_stages_only(regularization, layer):
    torch.manual_seed(0)
    # drop_prob = 1 and a block larger than the maps (clamped to them: SpatialDropout) drop all.
    model = build_model("convnet", 10, 1, regularization, filters=8, drop_prob=1.0, block_size=32)
    found = [name for name, m in model.named_modules() if isinstance(m, layer)]
    assert found == ["stage2.2", "stage3.2"]                   # after each stage's second conv
    assert model.stage2[2].p == 1.0 if layer is nn.Dropout else model.stage2[2].drop_prob == 1.0
    x = torch.rand(4, 1, 28, 28)
    # drop_prob = 1 drops everything where the layer sits: stage2's and stage3's outputs are zero
    # in training mode, stage1's are not; in eval mode the layers are the identity.
    outputs = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda _m, _i, out, n=n: outputs.__setitem__(n, out.detach()))
        for n in ("stage1", "stage2", "stage3")]
    try:
        model.train()(x)
    finally:
        for h in hooks:
            h.remove()
    assert outputs["stage1"].abs().sum() > 0
    assert outputs["stage2"].abs().sum() == 0 and outputs["stage3"].abs().sum() == 0
    assert feature_maps(model, x, "stage2").abs().sum() > 0     # feature_maps: eval mode
    plain = build_model("convnet", 10, 1, filters=8)
    plain.load_state_dict(model.state_dict())                  # the layers hold no state
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))


def test_convnet_initialisation_is_he_for_leaky_relu_with_zero_biases():
    torch.manual_seed(0)
    model = ConvNet(10, 3, filters=64)
    gain = (2 / (1 + 0.2 ** 2)) ** 0.5
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            expected = (1.0 if m is model.head else gain) / fan_in ** 0.5
            rel = 0.1 if m.weight.numel() < 10_000 else 0.02
            assert m.weight.std().item() == pytest.approx(expected, rel=rel)
            assert m.weight.mean().abs().item() < 0.1 * expected
            assert torch.count_nonzero(m.bias) == 0
