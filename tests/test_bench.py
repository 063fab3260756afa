"""``python -m robust_nb bench`` at tiny sizes: the JSON's structure and the agreement checks
(no timing is asserted: timings depend on the machine and its load)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import robust_nb as rnb
from robust_nb import bench
from robust_nb.models import build_model

PATH_KEYS = {"flops", "wall_s", "cpu_s", "dtype", "flops_per_s", "fraction_of_peak"}


@pytest.fixture(scope="module")
def result():
    return bench.run("quick", n=8, train_n=32, repeats=1)


def test_the_result_is_json_with_every_section(result):
    again = json.loads(json.dumps(result))
    assert again["profile"] == "quick" and again["model"] == "convnet"
    assert set(again["training"]) == {"classical", "pgd", "trades"}
    pgd = again["pgd"]
    assert pgd["n"] == 8 and pgd["steps"] == 10
    assert {"textbook fp32", "robust_nb fp32", "torchattacks fp32"} <= set(pgd["paths"])
    sections = [pgd, *again["training"].values()]
    for section in sections:
        assert "textbook fp32" in section["paths"]
        assert section["peak_flops"]["fp32"] > 0
        assert not any(name.startswith(bench.PEAK) for name in section["paths"])
        for path in section["paths"].values():
            assert PATH_KEYS <= set(path)
            assert path["flops"] > 0                       # a convnet: convolutions counted
            assert len(path["wall_s"]["runs"]) == 1
            assert path["wall_s"]["min"] <= path["wall_s"]["median"] <= path["wall_s"]["max"]
    for method in ("classical", "pgd", "trades"):
        paths = again["training"][method]["paths"]
        assert "robust_nb fp32" in paths and any(p.startswith("robust_nb recipe") for p in paths)
        assert again["training"][method]["images"] == 32


def test_every_pgd_implementation_agrees_with_the_textbook(result, mnist):
    pgd = result["pgd"]
    assert pgd["agree"]
    for name, path in pgd["paths"].items():
        assert path["agree"], name
        if name.endswith("fp32"):
            assert path["pixels_differing"] <= 0.01, name
        assert path["loss_gain_vs_textbook"] >= 0.9, name
    # the same algorithm: torchattacks counts the textbook's FLOPs exactly; robust_nb's adds one
    # forward pass of one image (its input check reads the model's number of outputs)
    flops = {name: p["flops"] for name, p in pgd["paths"].items() if name.endswith("fp32")}
    assert flops["torchattacks fp32"] == flops["textbook fp32"]
    cfg = rnb.setup("quick", verbose=False)
    model = rnb.models.for_config(cfg, mnist).eval()              # the bench's architecture
    one_image = bench.count_flops(lambda: model(mnist.test[0][:1]))
    assert flops["robust_nb fp32"] == flops["textbook fp32"] + one_image


def test_the_flops_of_a_forward_pass_are_counted():
    model = torch.nn.Linear(10, 4)
    x = torch.rand(3, 10)
    assert bench.count_flops(lambda: model(x)) == 2 * 3 * 10 * 4


def test_the_table_shows_every_path(result):
    text = bench.table(result)
    assert text.count("| PGD-10, 8 images |") == len(result["pgd"]["paths"])
    for method in ("classical", "pgd", "trades"):
        assert f"| {method} epoch, 32 images | textbook fp32 |" in text
    assert "DISAGREES" not in text
    assert "PGD speed relative to torchattacks.PGD: robust_nb fp32: wall" in text


def test_without_torchattacks_the_column_is_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)        # import raises ImportError
    model = build_model("convnet", 10, 1, filters=2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 1, 28, 28, generator=g), torch.arange(4)
    out = bench.pgd_section(model, x, y, eps=0.1, alpha=0.025, repeats=1, steps=2)
    assert "torchattacks fp32" not in out["paths"]
    assert any("torchattacks is not installed" in note for note in out["notes"])
    assert out["agree"]


def test_the_subcommand_checks_its_sizes(capsys):
    from robust_nb.__main__ import main

    assert main(["bench", "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
