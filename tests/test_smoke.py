"""The smoke run (robust_nb.smoke, ``python -m robust_nb run --smoke``): the fake CIFAR-10 in
torchvision's on-disk format, the shrinking rules, the runner's AssertionError rule, and (slow)
every notebook in the full profile at tiny sizes."""

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import robust_nb as rnb
from robust_nb import smoke
from robust_nb.__main__ import main
from robust_nb.data import CIFAR10_CLASSES, Dataset, DatasetUnavailableError, load_dataset
from robust_nb.training import METHODS, recipe

FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
         "test_batch", "batches.meta")


@pytest.fixture
def smoke_mode(monkeypatch):
    monkeypatch.setenv("ROBUST_NB_SMOKE", "1")


@pytest.fixture(scope="module")
def full():
    return rnb.setup("full", verbose=False)


def _read(path, encoding="bytes"):
    with open(path, "rb") as f:
        return pickle.load(f, encoding=encoding)


# -- the fake CIFAR-10 -------------------------------------------------------------------------

def test_fake_cifar10_is_torchvisions_on_disk_format(tmp_path):
    root = smoke.write_fake_cifar10(tmp_path, n_train=33, n_test=12, seed=3)
    folder = root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES + (smoke.MANIFEST,))
    sizes = []
    for name in FILES[:6]:
        batch = _read(folder / name)                         # as on the dataset's web page
        assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
        data, labels = batch[b"data"], batch[b"labels"]
        assert data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
        assert isinstance(labels, list) and len(labels) == len(data) == len(batch[b"filenames"])
        assert all(isinstance(c, int) and 0 <= c < 10 for c in labels)
        sizes.append(len(labels))
        assert set(_read(folder / name, "latin1")) == {"batch_label", "labels", "data",
                                                       "filenames"}   # how torchvision reads
    assert sizes == [7, 7, 7, 6, 6, 12]
    meta = _read(folder / "batches.meta")
    assert meta[b"label_names"] == [c.encode() for c in CIFAR10_CLASSES]
    assert meta[b"num_vis"] == 3072
    manifest = json.loads((folder / smoke.MANIFEST).read_text())
    assert manifest["md5"] == {n: hashlib.md5((folder / n).read_bytes()).hexdigest()
                               for n in FILES}


def test_fake_cifar10_depends_only_on_the_seed(tmp_path):
    a = smoke.write_fake_cifar10(tmp_path / "a", seed=1) / "cifar-10-batches-py"
    b = smoke.write_fake_cifar10(tmp_path / "b", seed=1) / "cifar-10-batches-py"
    c = smoke.write_fake_cifar10(tmp_path / "c", seed=2) / "cifar-10-batches-py"
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in FILES)
    assert (a / "test_batch").read_bytes() != (c / "test_batch").read_bytes()


def test_fake_cifar10_loads_through_load_dataset_in_smoke_mode(tmp_path, smoke_mode):
    root = smoke.write_fake_cifar10(tmp_path, n_train=30, n_test=12)
    data = load_dataset("cifar10", root=root)
    (xtr, ytr), (xte, yte) = data.train, data.test
    assert data.name == "cifar10" and data.classes == CIFAR10_CLASSES and data.flip
    assert xtr.shape == (30, 3, 32, 32) and xte.shape == (12, 3, 32, 32)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert 0 <= xtr.min() and xtr.max() <= 1
    assert (torch.bincount(ytr, minlength=10) == 3).all()            # balanced, every class
    assert set(yte.tolist()) == set(range(10))
    # the pixels are the files' rows: 1024 red, 1024 green, 1024 blue values, row by row
    folder = root / "cifar-10-batches-py"
    batches = [_read(folder / f"data_batch_{i}") for i in range(1, 6)]
    rows = np.concatenate([b[b"data"] for b in batches])
    expected = torch.from_numpy(rows.reshape(-1, 3, 32, 32)).float() / 255
    assert torch.equal(xtr, expected)
    assert ytr.tolist() == [c for b in batches for c in b[b"labels"]]
    assert data.mean == pytest.approx(tuple(xtr.mean((0, 2, 3)).tolist()), abs=1e-4)


def test_outside_smoke_mode_the_real_md5_sums_reject_a_fake_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUST_NB_SMOKE", raising=False)
    root = smoke.write_fake_cifar10(tmp_path)
    with pytest.raises(DatasetUnavailableError, match="not found or corrupted"):
        load_dataset("cifar10", root=root, download=False)


def test_a_changed_fake_file_fails_the_md5_check(tmp_path, smoke_mode):
    root = smoke.write_fake_cifar10(tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetUnavailableError, match="write_fake_cifar10") as info:
        load_dataset("cifar10", root=root)                  # download=True: never downloads
    assert "do not match the md5 sums" in str(info.value)
    (root / "cifar-10-batches-py" / "batches.meta").unlink()
    smoke.write_fake_cifar10(tmp_path)                      # rewriting repairs it
    assert load_dataset("cifar10", root=root).train[0].shape == (smoke.N_TRAIN, 3, 32, 32)


def test_a_folder_without_the_manifest_is_torchvisions_dataset(tmp_path, smoke_mode):
    import torchvision.datasets as tvd

    assert smoke.cifar10_class(tmp_path) is tvd.CIFAR10
    with pytest.raises(DatasetUnavailableError, match="offline"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_write_refuses_a_real_copy_and_tiny_sizes(tmp_path):
    real = tmp_path / "cifar-10-batches-py"
    real.mkdir()
    (real / "data_batch_1").write_bytes(b"the real thing")
    with pytest.raises(FileExistsError, match="real"):
        smoke.write_fake_cifar10(tmp_path)
    assert (real / "data_batch_1").read_bytes() == b"the real thing"
    with pytest.raises(ValueError, match="n_test must be an integer >= 10"):
        smoke.write_fake_cifar10(tmp_path / "x", n_test=9)


@pytest.mark.parametrize("value, on", [("1", True), ("0", False), ("", False)])
def test_smoke_mode_comes_from_the_environment(monkeypatch, value, on):
    monkeypatch.setenv("ROBUST_NB_SMOKE", value)
    assert smoke.enabled() is on


def test_an_unclear_smoke_value_is_an_error(monkeypatch):
    monkeypatch.setenv("ROBUST_NB_SMOKE", "yes")
    with pytest.raises(ValueError, match="ROBUST_NB_SMOKE must be 1"):
        smoke.enabled()


# -- the shrinking rules -----------------------------------------------------------------------

def test_shrink_config_lowers_the_sizes_only(full):
    small = smoke.shrink_config(full)
    for name, value in smoke.CONFIG_SIZES.items():
        assert getattr(small, name) == min(value, getattr(full, name))
    assert small.n_autoattack <= small.n_attack <= smoke.N_TEST
    assert small.trades_betas == (0.0, 6.0) and small.trades_sweep_epochs == smoke.EPOCHS  # 6: recipe's
    kept = {f.name for f in dataclasses.fields(full)} - set(smoke.CONFIG_SIZES) - {"trades_betas"}
    assert all(getattr(small, n) == getattr(full, n) for n in kept)   # dataset, models, eps...
    assert (small.dataset, small.model, small.width, small.eps_linf) == ("cifar10",
                                                                         "preact_resnet18", 1.0,
                                                                         8 / 255)
    assert smoke.shrink_config(small) == small


@pytest.mark.parametrize("method", METHODS)
def test_shrink_options_keeps_every_full_recipe_but_its_sizes(full, method, monkeypatch):
    monkeypatch.delenv("ROBUST_NB_SMOKE", raising=False)
    options = recipe(full, method).options
    small = smoke.shrink_options(options)
    assert type(small) is type(options)
    assert small.epochs == smoke.EPOCHS and small.batch_size == smoke.BATCH_SIZE
    assert small.milestones == () and small.warmup_epochs == 0
    sizes = {"epochs", "batch_size", "milestones", "warmup_epochs", "steps", "robust_val",
             "robust_val_steps", "guard_steps", "restarts"}
    for name in set(options.names()) & {"steps", "robust_val_steps", "guard_steps"}:
        assert getattr(small, name) == smoke.ATTACK_STEPS
    if "robust_val" in options.names() and options.robust_val:
        assert small.robust_val == smoke.ROBUST_VAL
    for name in set(options.names()) - sizes:          # lr, schedule, eps, beta, select_best...
        assert getattr(small, name) == getattr(options, name), name
    assert smoke.shrink_options(small) == small


def test_setup_and_recipes_shrink_in_smoke_mode_only(smoke_mode, monkeypatch):
    cfg = rnb.setup("full", verbose=False)
    assert cfg.n_attack == smoke.CONFIG_SIZES["n_attack"] and cfg.profile == "full"
    r = recipe(cfg, "pgd")
    assert (r.holdout, r.options.epochs, r.options.steps, r.options.robust_val) == \
        (smoke.HOLDOUT, smoke.EPOCHS, smoke.ATTACK_STEPS, smoke.ROBUST_VAL)
    assert r.model == "preact_resnet18" and recipe(cfg, "trades").model == "wrn_34_10"
    assert recipe(cfg, "classical").holdout == 0
    monkeypatch.delenv("ROBUST_NB_SMOKE")
    cfg = rnb.setup("full", verbose=False)
    assert cfg.n_attack == 10000
    assert (recipe(cfg, "pgd").holdout, recipe(cfg, "pgd").options.epochs) == (1000, 200)


def test_setup_banner_says_smoke(smoke_mode, capsys):
    rnb.setup("full")
    assert "SMOKE run" in capsys.readouterr().out


def test_train_method_keeps_overrides_tiny_in_smoke_mode(mnist, tmp_path, smoke_mode,
                                                         monkeypatch):
    monkeypatch.setenv("ROBUST_NB_CACHE", str(tmp_path))
    cfg = rnb.setup("quick", verbose=False)
    (x, y), (xt, yt) = mnist.train, mnist.test
    tiny = Dataset("mnist-tiny", (x[:40], y[:40]), (xt[:20], yt[:20]), mnist.classes,
                   mnist.mean, mnist.std, flip=False)
    _, history = rnb.training.train_method(cfg, tiny, "pgd", epochs=5, quiet=True)
    assert len(history.records) == smoke.EPOCHS
    assert all("val_robust_acc" in r for r in history.records)
    (entry,) = tmp_path.glob("*.pt")
    config = json.loads(torch.load(entry, weights_only=True)["config"])
    assert (config["epochs"], config["batch_size"], config["steps"], config["robust_val"]) == \
        (smoke.EPOCHS, smoke.BATCH_SIZE, smoke.ATTACK_STEPS, smoke.ROBUST_VAL)


# -- the runner ----------------------------------------------------------------------------------

def _notebook(path, *sources):
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}"),
                             *(new_code_cell(s) for s in sources)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def test_smoke_counts_failed_asserts_and_fails_on_any_other_error(tmp_path, capsys):
    data = smoke.write_fake_cifar10(tmp_path / "data")
    ok = _notebook(tmp_path / "97_learns_nothing.ipynb",
                   "import os\nimport robust_nb as rnb\ncfg = rnb.setup()\n"
                   "data = rnb.data.load_dataset(cfg.dataset)\n"
                   "print(cfg.profile, cfg.n_attack, data.train[0].shape[0], "
                   "os.environ['ROBUST_NB_SMOKE'], os.environ['ROBUST_NB_CACHE'])",
                   "assert 0.3 > 0.9, 'robust accuracy'",
                   "print('after the assert')")
    bug = _notebook(tmp_path / "98_bug.ipynb",
                    "raise ValueError('expected 3 channels, got 1')",
                    "print('after the bug')")
    out = tmp_path / "out"
    assert main(["run", "--smoke", str(ok), str(bug), "--data", str(data), "--out", str(out),
                 "--timeout", "300"]) == 1
    captured = capsys.readouterr()
    assert "97_learns_nothing.ipynb" in captured.out and "1 assert cell(s) failed" in captured.out
    assert "98_bug.ipynb" in captured.out and "other errors: 1" in captured.out
    assert "failed assert cells (expected in a smoke run) 97: 1, 98: 0" in captured.out
    report = captured.err.split("smoke run FAILED")[1]          # after the progress bars
    assert "98_bug, cell 1" in report and "ValueError: expected 3 channels, got 1" in report
    assert "97_learns_nothing, cell" not in report and "robust accuracy" not in report
    executed = nbformat.read(out / "97_learns_nothing.ipynb", as_version=4)
    printed = executed.cells[1].outputs[-1]["text"].split()
    assert printed[:4] == ["full", str(smoke.CONFIG_SIZES["n_attack"]), str(smoke.N_TRAIN), "1"]
    assert printed[4] != str(rnb.training.cache.default_cache_dir())    # a cache of its own
    assert executed.cells[3].outputs[0]["text"] == "after the assert\n"  # every cell ran
    assert nbformat.read(out / "98_bug.ipynb", as_version=4).cells[2].outputs


def test_the_environment_variable_starts_a_smoke_run_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBUST_NB_SMOKE", "1")
    monkeypatch.setenv("ROBUST_NB_PROFILE", "quick")        # a smoke run is full anyway
    nb = _notebook(tmp_path / "96_env.ipynb",
                   "import os\nprint(os.environ['ROBUST_NB_PROFILE'], os.environ['ROBUST_NB_DATA'])")
    assert main(["run", str(nb), "--out", str(tmp_path / "out")]) == 0
    assert "smoke run: full profile" in capsys.readouterr().out
    executed = nbformat.read(tmp_path / "out" / "96_env.ipynb", as_version=4)
    profile, data = executed.cells[1].outputs[0]["text"].split()
    assert profile == "full" and Path(data).name == "data" and "robust_nb_smoke_" in data
    assert not Path(data).exists()                           # the temporary copy is gone


def _traceback(*frames):
    """An IPython traceback (as nbclient stores it, ANSI codes removed) through ``frames``."""
    lines = ["-" * 75, "AssertionError                            Traceback (most recent call last)"]
    for frame in frames:
        lines += [frame, "      1 x = 1", "----> 2 check(x)", ""]
    return "\n".join(lines + ["AssertionError: "])


PACKAGE = Path(rnb.__file__).resolve().parent
CELL = "Cell In[7], line 2"
IN_PACKAGE = f"File {PACKAGE / 'training' / 'base.py'}:301, in ClassicalTraining.fit(self, train)"
IN_TORCH = "File /venv/lib/python3.11/site-packages/torch/testing/_comparison.py:1587, in assert_close()"


@pytest.mark.parametrize("frames, expected", [
    ((CELL,), True),                                  # the notebook's own assert
    ((CELL, IN_TORCH), True),                         # a testing helper the notebook called
    ((CELL, IN_PACKAGE, CELL), True),                 # its assert in a callback the package ran
    ((CELL, IN_PACKAGE), False),                      # an assert inside robust_nb: a bug
    ((CELL, IN_PACKAGE, IN_TORCH), False),            # torch asserting below robust_nb: a bug
    (("Input In [3], in <cell line: 2>()", IN_PACKAGE), False),      # older IPython formats
    (("<ipython-input-3-1f2e> in <module>", IN_TORCH), True),
])
def test_only_the_notebooks_own_assertion_errors_are_expected(frames, expected):
    error = smoke.CellError("04_attacks", 7, "AssertionError", "", "check(x)", _traceback(*frames))
    assert error.expected is expected
    assert not dataclasses.replace(error, ename="ValueError").expected


def test_smoke_arguments_are_checked(tmp_path, capsys, monkeypatch):
    assert main(["run", "--smoke", "00", "--profile", "quick"]) == 2
    assert main(["run", "00", "--data", str(tmp_path)]) == 2
    assert "--data needs --smoke" in capsys.readouterr().err
    monkeypatch.setenv("ROBUST_NB_SMOKE", "1")
    assert main(["reproduce", "00"]) == 2
    assert "is 'run' in the full profile" in capsys.readouterr().err


@pytest.mark.slow
def test_every_notebook_runs_in_the_full_profile_at_smoke_size(tmp_path, capsys):
    """The GPU course on this CPU: fake CIFAR-10, WRN-34-10 and PreAct-ResNet-18, every full
    recipe, one epoch of a few steps. Fails on any error in a notebook that is not a failed
    assert (those check what real training teaches)."""
    data = smoke.write_fake_cifar10(tmp_path / "data")
    status = main(["run", "--smoke", "--data", str(data), "--out", str(tmp_path / "out"),
                   "--timeout", "900"])
    captured = capsys.readouterr()
    print(captured.out)                         # per-notebook times in the test log
    assert status == 0, captured.err.rpartition("smoke run FAILED")[2]   # the errors, no bars
    assert f"smoke: {len(rnb.__main__.find_notebooks([]))} notebook(s)" in captured.out
