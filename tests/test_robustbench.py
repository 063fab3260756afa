"""rnb.models.load_robustbench against a stand-in ``robustbench`` package: nothing downloads."""

import enum
import sys
import types

import pytest
import torch
from torch import nn

from robust_nb.models import ModelUnavailableError, load_robustbench, robustbench_weights_path


class BenchmarkDataset(enum.Enum):
    cifar_10 = "cifar10"
    cifar_100 = "cifar100"


class ThreatModel(enum.Enum):
    Linf = "Linf"
    L2 = "L2"


class Calls:
    """The stand-in's ``load_model``: records its arguments, then returns a model or raises."""

    def __init__(self, error=None):
        self.error, self.calls = error, []

    def __call__(self, model_name, model_dir, dataset, threat_model):
        self.calls.append(dict(model_name=model_name, model_dir=model_dir, dataset=dataset,
                               threat_model=threat_model))
        if self.error is not None:
            raise self.error
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)).train()


def _install(monkeypatch, load_model):
    zoo = {BenchmarkDataset.cifar_10: {ThreatModel.Linf: {
        "Zhang2019Theoretically": {"gdrive_id": "abc"},
        "Chen2020Adversarial": {"gdrive_id": ["a", "b", "c"]}}, ThreatModel.L2: {}}}
    package = types.ModuleType("robustbench")
    model_zoo = types.ModuleType("robustbench.model_zoo")
    model_zoo.model_dicts = zoo
    enums = types.ModuleType("robustbench.model_zoo.enums")
    enums.BenchmarkDataset, enums.ThreatModel = BenchmarkDataset, ThreatModel
    utils = types.ModuleType("robustbench.utils")
    utils.load_model = load_model
    for name, module in [("robustbench", package), ("robustbench.model_zoo", model_zoo),
                         ("robustbench.model_zoo.enums", enums), ("robustbench.utils", utils)]:
        monkeypatch.setitem(sys.modules, name, module)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r'pip install "robust-nb\[robustbench\]"'):
        load_robustbench("Zhang2019Theoretically")


def test_loads_through_robustbench_into_root(monkeypatch, tmp_path):
    load = Calls()
    _install(monkeypatch, load)
    model = load_robustbench("Zhang2019Theoretically", root=tmp_path)
    assert load.calls == [dict(model_name="Zhang2019Theoretically", model_dir=str(tmp_path),
                               dataset="cifar10", threat_model="Linf")]
    assert not model.training
    assert model(torch.rand(2, 3, 4, 4)).shape == (2, 10)  # [0, 1] images in, logits out


def test_default_root_is_under_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUST_NB_DATA", str(tmp_path))
    assert robustbench_weights_path("Wong2020Fast") == (
        tmp_path / "robustbench" / "cifar10" / "Linf" / "Wong2020Fast.pt")
    load = Calls()
    _install(monkeypatch, load)
    load_robustbench("Zhang2019Theoretically")
    assert load.calls[0]["model_dir"] == str(tmp_path / "robustbench")


def test_offline_without_weights_names_the_file(monkeypatch, tmp_path):
    offline = ConnectionError("Failed to resolve 'drive.google.com'")
    _install(monkeypatch, Calls(error=offline))
    expected = tmp_path / "cifar10" / "Linf" / "Zhang2019Theoretically.pt"
    with pytest.raises(ModelUnavailableError, match="Offline") as info:
        load_robustbench("Zhang2019Theoretically", root=tmp_path)
    assert str(expected) in str(info.value) and info.value.__cause__ is offline


def test_no_download_fails_before_calling_robustbench(monkeypatch, tmp_path):
    load = Calls()
    _install(monkeypatch, load)
    with pytest.raises(FileNotFoundError, match="Chen2020Adversarial.pt"):
        load_robustbench("Chen2020Adversarial", root=tmp_path, download=False)
    assert load.calls == []
    weights = robustbench_weights_path("Zhang2019Theoretically", root=tmp_path)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    load_robustbench("Zhang2019Theoretically", root=tmp_path, download=False)
    assert len(load.calls) == 1


def test_weights_on_disk_but_unreadable_is_not_called_offline(monkeypatch, tmp_path):
    broken = OSError("truncated file")
    _install(monkeypatch, Calls(error=broken))
    weights = robustbench_weights_path("Zhang2019Theoretically", root=tmp_path)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"half")
    with pytest.raises(OSError, match="truncated file"):
        load_robustbench("Zhang2019Theoretically", root=tmp_path)


@pytest.mark.parametrize("args, match", [
    (("Zhang2019Theoreticaly",), "did you mean Zhang2019Theoretically"),
    (("Zhang2019Theoretically", "svhn"), "unknown RobustBench dataset 'svhn'"),
    (("Zhang2019Theoretically", "cifar10", "Linf2"), "unknown RobustBench threat model"),
    (("Zhang2019Theoretically", "cifar10", "L2"), "no cifar10/L2 model"),
])
def test_unknown_names(monkeypatch, args, match):
    load = Calls()
    _install(monkeypatch, load)
    with pytest.raises(ValueError, match=match):
        load_robustbench(*args)
    assert load.calls == []
