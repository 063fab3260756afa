"""``python -m robust_nb.train``: generated flags, config files, outputs, resume, clear errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from imagefolders import write_image_folder

from robust_nb import train as cli
from robust_nb.training.checkpoint import CHECKPOINT_FORMAT

TINY = ["--recipe", "quick", "--model", "convnet", "--filters", "4", "--image-size", "12",
        "--batch-size", "16", "--amp", "false", "--eval-n", "8", "--eval-steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def methods():
    return cli.method_options()


def run(args, capsys=None) -> tuple[int, str]:
    """main(args) -> (exit code, stderr); argparse errors exit via SystemExit."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def test_help_documents_every_option_of_every_method(methods):
    out = subprocess.run([sys.executable, "-m", "robust_nb.train", "--help"], capture_output=True,
                         text=True, check=True, env={"COLUMNS": "200", "PATH": ""}).stdout
    for method, options in methods.items():
        assert method in out
        for f in dataclasses.fields(options):
            flag = "--" + f.name.replace("_", "-")
            assert flag in out, flag
            assert f.metadata["doc"].split("(")[0].strip()[:30] in " ".join(out.split()), f.name
    for flag in ("--config", "--resume", "--out", "--stop-after", "--sync-batchnorm", "--dataset"):
        assert flag in out


@pytest.mark.parametrize("text, annotation, expected", [
    ("3", "int", 3), ("0.5", "float", 0.5), ("none", "float | None", None),
    ("2", "int | None", 2), ("false", "bool | str | None", False), ("bf16", "bool | str | None",
                                                                     "bf16"),
    ("none", "bool | str | None", None), ("74", "tuple", 74), ("ce", "tuple", "ce"),
])
def test_values_are_typed_from_the_annotations(text, annotation, expected):
    assert cli._converter(annotation)(text) == expected


def test_a_run_writes_checkpoint_history_model_and_evaluation(folder, tmp_path):
    out = tmp_path / "run"
    code, _ = run([*TINY, "--method", "trades", "--dataset", f"imagefolder:{folder}", "--epochs",
                   "2", "--steps", "2", "--eps-warmup-epochs", "0", "--out", out])
    assert code == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["trainer"] == "TradesTraining" and settings["options"]["epochs"] == 2
    assert settings["options"]["steps"] == 2 and settings["world_size"] == 1
    history = json.loads((out / "history.json").read_text())
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(history["records"]) == len(rows) == 2
    assert history["loss_name"].startswith("TRADES")
    assert float(rows[1]["loss"]) == pytest.approx(history["records"][1]["loss"])
    ev = json.loads((out / "evaluation.json").read_text())
    for key in ("clean", "pgd"):
        assert ev[key]["low"] <= ev[key]["value"] <= ev[key]["high"]
    assert ev["clean"]["n"] == 16 and ev["pgd"]["n"] == 8 and ev["pgd"]["steps"] == 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["epoch"] == 2
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["model"] == "convnet" and model["num_classes"] == 2
    for k, v in ckpt["model"].items():                  # no EMA: the trained weights themselves
        assert torch.equal(model["state_dict"][k], v), k
    trained = cli.load_trained(out)                     # rebuilt: the evaluation's accuracy
    from robust_nb.data import load_dataset
    from robust_nb.evaluation import accuracy

    test = load_dataset(f"imagefolder:{folder}", image_size=12, device="cpu").test
    assert accuracy(trained, *test) == ev["clean"]["value"]


def test_stop_and_resume_equal_an_uninterrupted_run(folder, tmp_path):
    args = [*TINY, "--method", "pgd", "--dataset", f"imagefolder:{folder}", "--epochs", "2",
            "--steps", "2", "--eps-warmup-epochs", "1", "--robust-val", "8"]
    assert run([*args, "--out", tmp_path / "a"])[0] == 0
    assert run([*args, "--out", tmp_path / "b", "--stop-after", "1"])[0] == 0
    assert not (tmp_path / "b" / "model.pt").exists()
    assert run([*args, "--out", tmp_path / "b", "--resume"])[0] == 0
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True)["state_dict"] for d in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha, hb = (json.loads((tmp_path / d / "history.json").read_text())["records"] for d in "ab")
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]


def test_config_files_and_flags(folder, tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(f'method = "fgsm"\nrecipe = "quick"\nmodel = "convnet"\nfilters = 4\n'
                    f'dataset = "imagefolder:{folder}"\nimage_size = 12\nout = "{tmp_path / "t"}"\n'
                    f'eval_n = 8\neval_steps = 1\nquiet = true\n\n'
                    f'[options]\nepochs = 1\nbatch_size = 16\namp = false\nlr = 0.01\n'
                    f'eps_warmup_epochs = 0\nrobust_val = 8\nmilestones = []\n')
    assert run(["--config", toml, "--lr", "0.02"], capsys)[0] == 0     # the flag wins
    settings = json.loads((tmp_path / "t" / "run.json").read_text())
    assert settings["method"] == "fgsm" and settings["options"]["lr"] == 0.02
    assert settings["options"]["batch_size"] == 16 and settings["options"]["robust_val"] == 8
    yaml = tmp_path / "run.yaml"
    yaml.write_text(f"method: classical\nrecipe: quick\nmodel: convnet\nfilters: 4\n"
                    f"dataset: 'imagefolder:{folder}'\nimage_size: 12\nout: {tmp_path / 'y'}\n"
                    f"eval_n: 8\neval_steps: 1\nquiet: true\n"
                    f"options: {{epochs: 1, batch_size: 16, amp: false, milestones: [0]}}\n")
    assert run(["--config", yaml], capsys)[0] == 0
    settings = json.loads((tmp_path / "y" / "run.json").read_text())
    assert settings["options"]["milestones"] == [0] and settings["method"] == "classical"


@pytest.mark.parametrize("args, message", [
    (["--method", "adamw"], "invalid choice: 'adamw'"),
    (["--model", "resnet7"], "unknown model 'resnet7'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--beta", "3"], "method 'classical' has no option"),
    (["--lr", "fast"], "argument --lr: expected float, got 'fast'"),
    (["--lr", "-1"], "lr must be a finite positive number"),
    (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
    ([], "--out DIR is required"),
    (["--eval-n", "0"], "eval-n must be an integer >= 1"),
    (["--stop-after", "0"], "stop-after must be an integer >= 1"),
])
def test_bad_arguments_exit_with_2_and_say_why(args, message, tmp_path, capsys):
    out = [] if not args else ["--out", tmp_path / "o"]
    code, err = run(["--recipe", "quick", "--quiet", *out, *args], capsys)
    assert code == 2 and message in err, err


def test_bad_config_files_exit_with_2(tmp_path, capsys):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text('method = "pgd"\nlearning_rate = 0.1\n')
    code, err = run(["--config", bad_key], capsys)
    assert code == 2 and "unknown setting(s) learning_rate" in err
    bad_option = tmp_path / "b.toml"
    bad_option.write_text(f'out = "{tmp_path / "o"}"\n[options]\nbeta = 2.0\n')
    code, err = run(["--config", bad_option, "--recipe", "quick"], capsys)
    assert code == 2 and "has no option(s) beta" in err
    broken = tmp_path / "c.toml"
    broken.write_text("method = \n")
    code, err = run(["--config", broken], capsys)
    assert code == 2 and "not valid TOML" in err
    code, err = run(["--config", tmp_path / "missing.toml"], capsys)
    assert code == 2 and "does not exist" in err


def test_a_missing_dataset_offline_says_what_to_do(tmp_path, capsys):
    code, err = run(["--recipe", "quick", "--dataset", "cifar10", "--data-root", tmp_path / "d",
                     "--no-download", "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 1 and "download=False" in err and str(tmp_path / "d") in err
    code, err = run(["--recipe", "quick", "--dataset", f"imagefolder:{tmp_path / 'none'}",
                     "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 1 and "does not exist" in err


def test_an_existing_run_is_not_overwritten(folder, tmp_path, capsys):
    args = [*TINY, "--dataset", f"imagefolder:{folder}", "--epochs", "1", "--out", tmp_path]
    assert run(args, capsys)[0] == 0
    code, err = run(args, capsys)
    assert code == 2 and "--resume" in err


def test_sync_batchnorm_is_refused_on_a_cpu(folder, tmp_path, capsys):
    code, err = run([*TINY, "--dataset", f"imagefolder:{folder}", "--epochs", "1",
                     "--batchnorm", "--sync-batchnorm", "--out", tmp_path], capsys)
    assert code == 1 and "SyncBatchNorm runs on GPUs only" in err
