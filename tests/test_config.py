import dataclasses
import os

import pytest
import torch

import robust_nb as rnb
from robust_nb.config import PROFILES, resolve_profile, usable_cpus


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
    for profile in PROFILES:          # Config(**table) raises TypeError on a missing or extra field
        cfg = rnb.setup(profile, verbose=False)
        assert all(getattr(cfg, f.name) is not None for f in dataclasses.fields(cfg)), profile


def test_setup_seeds_and_prints_one_banner(capsys):
    cfg = rnb.setup("quick", seed=3)
    a = torch.rand(3)
    rnb.setup("quick", seed=3, verbose=False)
    assert torch.equal(a, torch.rand(3))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "profile=quick" in out[0] and "mnist-5k" in out[0]
    assert cfg.seed == 3 and cfg.dataset == "mnist-5k"


def test_full_profile_uses_the_papers_threat_model():
    cfg = rnb.setup("full", verbose=False)
    assert cfg.dataset == "cifar10" and cfg.eps_linf == pytest.approx(8 / 255)
    assert cfg.n_attack == 10_000 and cfg.n_autoattack == 10_000    # the whole test set


@pytest.mark.parametrize("cpu_max, cap", [("max 100000\n", None), ("150000 100000\n", 2),
                                          ("50000 100000\n", 1), ("garbage\n", None)])
def test_usable_cpus_follows_the_cgroup_quota(tmp_path, cpu_max, cap):
    f = tmp_path / "cpu.max"
    f.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cpus(f) == (affinity if cap is None else min(affinity, cap))
    assert usable_cpus(tmp_path / "missing") == affinity


def test_setup_never_raises_the_thread_count_above_what_the_process_may_use():
    rnb.setup("quick", verbose=False)
    assert 1 <= torch.get_num_threads() <= usable_cpus()
