import dataclasses

import pytest
import torch

import robust_nb as rnb
from robust_nb.config import PROFILES, _PROFILES, resolve_profile


def test_profile_from_argument_env_and_auto(monkeypatch):
    assert resolve_profile("full")[0] == "full"
    monkeypatch.setenv("ROBUST_NB_PROFILE", "full")
    assert resolve_profile(None) == ("full", "$ROBUST_NB_PROFILE=full")
    monkeypatch.delenv("ROBUST_NB_PROFILE")
    expected = "full" if torch.cuda.is_available() else "quick"
    assert resolve_profile(None)[0] == expected


@pytest.mark.parametrize("bad", ["fast", "QUICK", ""])
def test_unknown_profile_is_a_clear_error(bad, monkeypatch):
    with pytest.raises(ValueError, match="unknown profile.*quick"):
        rnb.setup(bad, verbose=False) if bad else resolve_profile(bad)


def test_unknown_profile_from_environment(monkeypatch):
    monkeypatch.setenv("ROBUST_NB_PROFILE", "gpu")
    with pytest.raises(ValueError, match=r"\$ROBUST_NB_PROFILE=gpu"):
        rnb.setup(verbose=False)


def test_every_profile_fills_every_field():
    names = {f.name for f in dataclasses.fields(rnb.Config)} - {"profile", "device", "seed", "results_dir"}
    for profile in PROFILES:
        assert set(_PROFILES[profile]) == names, profile


def test_setup_seeds_and_prints_one_banner(capsys):
    cfg = rnb.setup("quick", seed=3)
    a = torch.rand(3)
    rnb.setup("quick", seed=3, verbose=False)
    assert torch.equal(a, torch.rand(3))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "profile=quick" in out[0] and "mnist-5k" in out[0]
    assert cfg.seed == 3 and cfg.dataset == "mnist-5k"


def test_full_profile_uses_the_papers_settings():
    cfg = rnb.setup("full", verbose=False)
    assert cfg.dataset == "cifar10" and cfg.eps_linf == pytest.approx(8 / 255)
    assert cfg.alpha_fgsm == pytest.approx(10 / 255)
    torch.set_num_threads(1)
