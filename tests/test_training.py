"""Tests of the training engine: schedules, EMA, NaN abort, checkpoints and exact resume, the
load-or-train cache, recipes and argument checks. Tiny models on a slice of the embedded MNIST
subset keep the whole file to a few seconds."""

import json
import math

import pytest
import torch
from torch import nn

from robust_nb.models.layers import Normalize
from robust_nb.training import (
    CheckpointError,
    ClassicalTraining,
    History,
    TrainingDiverged,
    load_or_train,
    lr_factor,
    train_method,
)
from robust_nb.training import checkpoint as ckpt_mod


def tiny_model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize((0.13,), (0.31,)),
        nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),   # (B, 6, 14, 14)
        nn.Conv2d(6, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(), # (B, 12, 7, 7)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(12, 10))


@pytest.fixture(scope="module")
def small(mnist):
    (x, y), (xt, yt) = mnist.train, mnist.test          # both sorted by class: pick at random
    g = torch.Generator().manual_seed(0)
    i, j = torch.randperm(len(y), generator=g)[:384], torch.randperm(len(yt), generator=g)[:200]
    return (x[i], y[i]), (xt[j], yt[j])


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ schedules
def test_schedules_match_hand_computed_values():
    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 9, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert [lr_factor("piecewise", s, 8) for s in range(8)] == [1, 1, 1, 1, .1, .1, .01, .01]
    # onecycle: 0 -> 1 at 2/5 of training -> 0 (Wong et al. 2020)
    assert lr_factor("onecycle", 0, 10) == 0.0
    assert lr_factor("onecycle", 4, 10) == pytest.approx(1.0)
    assert lr_factor("onecycle", 7, 10) == pytest.approx(0.5)
    # warm-up: linear to 1 over 4 steps, then cosine over the remaining 8
    assert [lr_factor("cosine", s, 12, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor("cosine", 8, 12, 4) == pytest.approx(0.5)


def test_schedule_errors_are_clear():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("exponential", 0, 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_factor("cosine", 0, 10, 10)


def test_trainer_follows_the_schedule(small):
    trainer = ClassicalTraining(tiny_model(), epochs=3, lr=0.1, batch_size=128,
                                schedule="piecewise", warmup_epochs=1, quiet=True)
    history = trainer.fit(small[0])
    steps = 3  # 384 / 128
    expected = [0.1 * lr_factor("piecewise", (e + 1) * steps - 1, 9, 3) for e in range(3)]
    assert history["lr"] == pytest.approx(expected)
    assert history["val_acc"] == [None, None, None]


# ------------------------------------------------------------------ EMA
class RecordingTraining(ClassicalTraining):
    """Records the weights (and BN buffers) seen before every step: those after the last step."""

    def training_loss(self, x, y):
        self.seen.append(params(self.model))
        return super().training_loss(x, y)


def test_ema_matches_a_reference_average_of_weights_and_buffers(small):
    decay = 0.8
    trainer = RecordingTraining(tiny_model(), epochs=2, lr=0.05, batch_size=96, ema_decay=decay,
                                quiet=True)
    trainer.seen = []
    trainer.fit(small[0], val=small[1])
    after_steps = trainer.seen[1:] + [params(trainer.model)]   # weights after each step
    assert len(after_steps) == 8
    reference = {k: v.float().clone() for k, v in after_steps[0].items()}   # first update copies
    for w in after_steps[1:]:
        for k in reference:
            reference[k] = decay * reference[k] + (1 - decay) * w[k].float()
    ema = trainer.eval_model.state_dict()
    for k, v in reference.items():
        if k.endswith("num_batches_tracked"):
            continue
        assert torch.allclose(ema[k].float(), v, atol=1e-6), k
    # BN running statistics are averaged too (use_buffers=True), and differ from the raw ones
    assert not torch.allclose(ema["2.running_mean"], trainer.model.state_dict()["2.running_mean"])
    assert trainer.eval_model is not trainer.model
    assert {"val_acc_raw", "val_loss_raw"} <= set(trainer.history.last)


# ------------------------------------------------------------------ NaN abort
class NanAtStep(ClassicalTraining):
    """Returns a NaN loss from global step `bad_step` on (as a diverging run would)."""

    def training_loss(self, x, y):
        loss, logits = super().training_loss(x, y)
        if self.global_step >= self.bad_step:
            loss = loss * float("nan")
        return loss, logits


@pytest.mark.parametrize("log_every", [1, 50])
def test_nan_aborts_naming_epoch_and_step_and_keeps_last_checkpoint(small, tmp_path, log_every):
    path = tmp_path / "run.pt"
    trainer = NanAtStep(tiny_model(), epochs=3, lr=0.05, batch_size=128, checkpoint=path,
                        log_every=log_every, quiet=True)
    trainer.bad_step = 4                                   # epoch 1, step 1 (3 steps an epoch)
    with pytest.raises(TrainingDiverged, match="epoch 1 .*step 1 of 3") as err:
        trainer.fit(small[0])
    assert err.value.epoch == 1 and err.value.step == 1 and err.value.global_step == 4
    assert math.isnan(err.value.losses[-1]) and all(math.isfinite(v) for v in err.value.losses[:-1])
    assert "learning rate" in str(err.value) and "intact" in str(err.value)
    # the checkpoint of epoch 0 is intact and loads
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]["records"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------ checkpoints and resume
def _resume_kwargs(path, callbacks=()):
    # augmentation, dropout (global RNG), mixup (own generator), EMA and momentum all carry state
    return dict(epochs=2, lr=0.05, batch_size=128, augment="crop", ema_decay=0.9,
                mixup_alpha=1.0, seed=3, checkpoint=path, quiet=True, callbacks=callbacks)


def test_resume_continues_exactly(small, tmp_path, interrupt_at):
    one_go = ClassicalTraining(tiny_model(dropout=0.3), **_resume_kwargs(tmp_path / "a.pt"))
    one_go.fit(small[0], val=small[1])

    noop = interrupt_at(-1)
    path = tmp_path / "b.pt"
    first = ClassicalTraining(tiny_model(dropout=0.3), **_resume_kwargs(path, [interrupt_at(1)]))
    with pytest.raises(interrupt_at.error):
        first.fit(small[0], val=small[1])
    torch.manual_seed(1234)                       # the caller's RNG must not matter
    second = ClassicalTraining(tiny_model(seed=99, dropout=0.3), **_resume_kwargs(path, [noop]))
    second.fit(small[0], val=small[1], resume=True)

    a, b = one_go.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = one_go.eval_model.state_dict(), second.eval_model.state_dict()
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in one_go.history.records]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in second.history.records]
    assert second.epoch == 2 and second.global_step == 6


def test_fit_leaves_the_callers_rng_alone(small):
    trainer = ClassicalTraining(tiny_model(dropout=0.2), epochs=1, lr=0.05, batch_size=192,
                                quiet=True)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    trainer.fit(small[0])
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_is_written_atomically(small, tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    trainer = ClassicalTraining(tiny_model(), epochs=1, lr=0.05, batch_size=192, checkpoint=path,
                                quiet=True)
    trainer.fit(small[0])
    before = path.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == before                       # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # and no temporary file is left


def test_corrupt_foreign_and_mismatched_checkpoints_give_clear_errors(small, tmp_path):
    kw = dict(epochs=2, lr=0.05, batch_size=192, quiet=True)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        ClassicalTraining(tiny_model(), checkpoint=garbage, **kw).fit(small[0], resume=True)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="written by something else"):
        ClassicalTraining(tiny_model(), checkpoint=foreign, **kw).fit(small[0], resume=True)
    good = tmp_path / "good.pt"
    ClassicalTraining(tiny_model(), checkpoint=good, **dict(kw, epochs=1)).fit(small[0])
    with pytest.raises(CheckpointError, match="epochs: 1 in the file vs 2"):
        ClassicalTraining(tiny_model(), checkpoint=good, **kw).fit(small[0], resume=True)
    with pytest.raises(ValueError, match="needs checkpoint"):
        ClassicalTraining(tiny_model(), **kw).fit(small[0], resume=True)


# ------------------------------------------------------------------ hooks and options
def test_hooks_perturb_callbacks_and_early_stop(small):
    calls = []

    class Probe(ClassicalTraining):
        def perturb(self, x, y):
            calls.append(("perturb", self.model.training))
            return x.flip(3)

        def on_epoch_end(self, epoch, record):
            calls.append(("end", epoch, record["val_acc"] is not None))
            if epoch == 1:
                self.stop_reason = "enough"

    trainer = Probe(tiny_model(), epochs=5, lr=0.05, batch_size=384, quiet=True,
                    callbacks=[lambda e: calls.append(("start", e))])
    history = trainer.fit(small[0], val=small[1])
    assert calls == [("start", 0), ("perturb", True), ("end", 0, True),
                     ("start", 1), ("perturb", True), ("end", 1, True)]
    assert history.stopped == "enough" and len(history) == 2 and trainer.epoch == 2


def test_grad_clip_bounds_the_first_update(small):
    model = tiny_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = ClassicalTraining(model, epochs=1, lr=0.5, batch_size=384, momentum=0.0,
                                weight_decay=0.0, schedule="constant", grad_clip=1e-3, quiet=True,
                                amp=False)
    trainer.fit(small[0])
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.5 * 1e-3, rel=1e-4)


def test_bf16_autocast_trains_like_fp32(small):
    runs = {}
    for amp in ("bf16", False):
        trainer = ClassicalTraining(tiny_model(), epochs=4, lr=0.03, batch_size=64,
                                    optimizer="adamw", amp=amp, channels_last=True,
                                    label_smoothing=0.1, quiet=True)
        runs[amp] = trainer.fit(small[0], val=small[1])
        assert trainer.config_dict()["amp"] == (amp or None)
    bf16, fp32 = runs["bf16"], runs[False]
    assert all(b < a for a, b in zip(bf16["loss"], bf16["loss"][1:]))   # it learns
    assert bf16["loss"][-1] < bf16["loss"][0] - 0.05
    assert bf16["loss"] == pytest.approx(fp32["loss"], abs=0.05)    # as fp32 does
    assert bf16.last["val_acc"] == pytest.approx(fp32.last["val_acc"], abs=0.1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="rmsprop"), "unknown optimizer"),
    (dict(schedule="step"), "unknown schedule"),
    (dict(amp="fp8"), "unknown amp"),
    (dict(lr=float("nan")), "lr must be a finite positive"),
    (dict(batch_size=2.5), "batch_size must be a positive integer"),
    (dict(epochs="3"), "epochs must be a positive integer"),
    (dict(seed=None), "seed must be a non-negative integer"),
    (dict(milestones=(3,)), "milestones"),
    (dict(milestones=(1, 1)), "increasing"),
    (dict(momentum=1.0), "momentum"),
    (dict(lrr=0.1), r"no option\(s\) \['lrr'\]"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(augment="rotate"), "unknown augment"),
    (dict(epochs=0), "epochs must be a positive integer"),
    (dict(warmup_epochs=2), "warmup_epochs"),
])
def test_bad_arguments_raise_value_errors(kwargs, message):
    kw = dict(epochs=2, lr=0.1, batch_size=32)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ClassicalTraining(tiny_model(), **kw)


def test_bad_data_raises_value_error(small):
    trainer = ClassicalTraining(tiny_model(), epochs=1, lr=0.1, batch_size=32, quiet=True)
    x, y = small[0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        trainer.fit((x * 255, y))
    with pytest.raises(ValueError, match="pair or a Dataset"):
        trainer.fit(x)
    bad = x.clone()
    bad[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN|finite"):       # not reported as a divergence
        trainer.fit((bad, y))


# ------------------------------------------------------------------ history, cache, recipes
def test_history_round_trips_through_json_and_plots():
    h = History([{"epoch": 0, "loss": 1.0, "acc": 0.5, "val_loss": None, "val_acc": None,
                  "lr": 0.1, "time": 1.0}], stopped="x")
    again = History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again == h and again["loss"] == [1.0]
    fig = h.plot()
    assert len(fig.axes) == 3
    with pytest.raises(KeyError, match="no column"):
        h["nope"]


def test_load_or_train_trains_once_then_loads(small, tmp_path):
    fits = []

    class Counted(ClassicalTraining):
        def fit(self, *a, **k):
            fits.append(1)
            return super().fit(*a, **k)

    kw = dict(epochs=1, lr=0.05, batch_size=192, ema_decay=0.5, cache_dir=tmp_path,
              quiet=True, profile="quick")
    m1, h1 = load_or_train(Counted, tiny_model, small[0], small[1], **kw)
    m2, h2 = load_or_train(Counted, tiny_model, small[0], small[1], **kw)
    assert len(fits) == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert h1 == h2 and not m2.training
    load_or_train(Counted, tiny_model, small[0], small[1], **dict(kw, lr=0.06))
    assert len(fits) == 2 and len(list(tmp_path.glob("*.pt"))) == 2   # new key, new entry
    # a corrupt cache entry is reported, not silently retrained over
    for p in tmp_path.glob("*.pt"):
        p.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_or_train(Counted, tiny_model, small[0], small[1], **kw)


_KILLABLE_RUN = """
import os, signal, sys
import torch
from torch import nn
import robust_nb as rnb
from robust_nb.models.layers import Normalize
from robust_nb.training import load_or_train

cache, kill_at = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
x, y = rnb.data.load_dataset("mnist-5k").train
i = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:384]
calls = []

def build():
    torch.manual_seed(0)
    model = nn.Sequential(Normalize((0.13,), (0.31,)), nn.Conv2d(1, 6, 3, stride=2, padding=1),
                          nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 10))
    def hook(module, args):
        if module.training:
            calls.append(1)
            if len(calls) == kill_at:            # mid-epoch: the 2nd step of epoch 2
                os.kill(os.getpid(), signal.SIGKILL)
    model.register_forward_pre_hook(hook)
    return model

load_or_train(rnb.training.ClassicalTraining, build, (x[i], y[i]), cache_dir=cache, quiet=True,
              profile="quick", epochs=3, lr=0.05, batch_size=128, ema_decay=0.5, augment="crop")
"""


def test_load_or_train_resumes_after_the_process_is_killed(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(_KILLABLE_RUN)

    def run(cache, kill_at):
        return subprocess.run([sys.executable, str(script), str(cache), str(kill_at)],
                              capture_output=True, text=True, timeout=300)

    killed = run(tmp_path / "a", 5)
    assert killed.returncode == -9, killed.stderr                 # SIGKILL, mid-epoch 2
    assert [p.name.endswith(".partial.pt") for p in (tmp_path / "a").iterdir()] == [True]
    resumed = run(tmp_path / "a", 0)
    assert resumed.returncode == 0, resumed.stderr
    assert run(tmp_path / "b", 0).returncode == 0                 # never interrupted
    entries = {d: [p for p in (tmp_path / d).iterdir()] for d in "ab"}
    assert all(len(e) == 1 and not e[0].name.endswith(".partial.pt") for e in entries.values())
    a, b = (torch.load(entries[d][0], weights_only=True) for d in "ab")
    assert a["key"] == b["key"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.loads(a["history"])["records"][-1]["loss"] == \
        json.loads(b["history"])["records"][-1]["loss"]


def test_train_method_validates_the_method_name(mnist):
    import robust_nb as rnb

    cfg = rnb.setup("quick", verbose=False)
    with pytest.raises(ValueError, match="classical"):
        train_method(cfg, mnist, "sgd-please")
    with pytest.raises(ValueError, match="no option"):
        train_method(cfg, mnist, "classical", betaa=3)


def test_options_come_from_keywords_or_an_instance(small):
    from robust_nb.training import PGDOptions, TrainOptions

    opts = TrainOptions(epochs=2, lr=0.1, batch_size=32, weight_decay=1e-4)
    trainer = ClassicalTraining(tiny_model(), opts, lr=0.2, quiet=True)
    assert trainer.options == opts.replace(lr=0.2) and trainer.lr == 0.2
    assert trainer.options.optimizer == "sgd" and trainer.weight_decay == 1e-4
    assert trainer.config_dict()["lr"] == 0.2 and trainer.config_dict()["milestones"] == []
    with pytest.raises(ValueError, match="takes TrainOptions, got PGDOptions"):
        ClassicalTraining(tiny_model(), PGDOptions(epochs=1, lr=0.1, batch_size=8, eps=0.1))
    with pytest.raises(ValueError, match="needs epochs"):
        ClassicalTraining(tiny_model(), lr=0.1, batch_size=8)
    with pytest.raises(AttributeError, match="nope"):
        _ = trainer.nope
    assert "peak learning rate" in str(opts)              # print(options) documents every field


def test_piecewise_milestones_follow_the_epochs(small):
    # TRADES' schedule: x0.1 from epoch index 2 of 3 (the reference's "epoch >= 75" of 76)
    trainer = ClassicalTraining(tiny_model(), epochs=3, lr=0.1, batch_size=128,
                                schedule="piecewise", milestones=(2,), quiet=True)
    history = trainer.fit(small[0])
    assert history["lr"] == pytest.approx([0.1, 0.1, 0.01])
    assert lr_factor("piecewise", 5, 9, milestones=(3, 6), decay=0.5) == 0.5
    assert lr_factor("piecewise", 6, 9, milestones=(3, 6), decay=0.5) == 0.25
    assert lr_factor("onecycle", 5, 10, peak=0.5) == 1.0          # Wong et al.'s CIFAR cycle


def test_confusion_matrix_counts_match_hand_computed():
    from robust_nb.plots import confusion_matrix

    y_true = torch.tensor([0, 0, 1, 2, 2, 2])
    y_pred = torch.tensor([0, 1, 1, 2, 0, 2])
    _, counts = confusion_matrix(y_true, y_pred, ("a", "b", "c"))
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix(y_true, y_pred[:3], ("a", "b", "c"))


def test_weight_ema_matches_torch_averaged_model():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from robust_nb.training.ema import WeightEMA

    model = tiny_model()
    ours = WeightEMA(model, 0.7)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.7), use_buffers=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):   # perturb weights and BN statistics as training would, then average
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point():
                    t.add_(torch.randn(t.shape, generator=g))
        ours.update(model)
        ref.update_parameters(model)
    a, b = ours.module.state_dict(), ref.module.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if a[k].is_floating_point())
    assert ours.n_averaged == 4
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(model, 1.0)


def test_train_method_announces_training_but_not_a_cache_hit(mnist, tmp_path, monkeypatch, capsys):
    import robust_nb as rnb
    from robust_nb.data import Dataset

    monkeypatch.setenv("ROBUST_NB_CACHE", str(tmp_path))
    cfg = rnb.setup("quick", verbose=False)
    (x, y), (xt, yt) = mnist.train, mnist.test
    tiny = Dataset("mnist-tiny", (x[:40], y[:40]), (xt[:20], yt[:20]), mnist.classes,
                   mnist.mean, mnist.std, flip=False)
    capsys.readouterr()
    train_method(cfg, tiny, "classical", model_name="convnet", epochs=1, batch_size=16, quiet=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines                      # quiet: no bars, but the one line
    assert lines[0].startswith("not in the cache: training the 'classical' recipe with epochs=1, "
                               "batch_size=16 (ClassicalTraining) on convnet: 1 epoch(s) x 3 batches "
                               "of 16 = 3 optimizer steps on 40 images")
    train_method(cfg, tiny, "classical", model_name="convnet", epochs=1, batch_size=16, quiet=True)
    assert capsys.readouterr().out == ""             # a cache hit trains nothing: nothing to say
    train_method(cfg, tiny, "classical", epochs=1, batch_size=8, quiet=True)   # the profile model
    assert f") on {cfg.model}: 1 epoch(s) x 5 batches" in capsys.readouterr().out


@pytest.mark.parametrize("native, emulated, expected", [
    (True, True, torch.bfloat16),      # a GPU with bf16 tensor cores
    (False, True, torch.float16),      # bf16 only emulated (older GPUs): fp16 with a scaler
    (False, False, torch.float16),
])
def test_automatic_amp_on_cuda_uses_bf16_only_where_it_is_native(monkeypatch, native, emulated,
                                                                 expected):
    def is_bf16_supported(including_emulation=True):
        return native or (including_emulation and emulated)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    cuda = torch.device("cuda")
    assert ClassicalTraining._resolve_amp(None, cuda) == expected
    assert ClassicalTraining._resolve_amp(True, cuda) == expected
    assert ClassicalTraining._resolve_amp(False, cuda) is None
    assert ClassicalTraining._resolve_amp("fp16", torch.device("cpu")) == torch.float16
