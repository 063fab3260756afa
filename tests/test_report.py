"""Recorded headline numbers and results.md (robust_nb.report)."""

import json
from pathlib import Path

import pytest

from robust_nb import report
from robust_nb.report import PUBLISHED, load, record, write_results_md
from robust_nb.stats import Accuracy, wilson_interval


@pytest.fixture
def results(tmp_path, monkeypatch):
    """An empty results folder that record() uses by default (as the runner sets it)."""
    folder = tmp_path / "results"
    monkeypatch.setenv(report.ENV_RESULTS, str(folder))
    monkeypatch.delenv(report.ENV_NOTEBOOK, raising=False)
    return folder


def test_record_stores_accuracy_with_wilson_interval(results):
    rec = record("pgd/clean", 0.931, n=1000)
    assert (rec.low, rec.high) == pytest.approx(wilson_interval(931, 1000))
    assert (rec.unit, rec.confidence, rec.n) == ("accuracy", 0.95, 1000)
    assert str(rec) == "pgd/clean = 93.1% (95% CI 91.4–94.5%, n=1000)"
    data = json.loads((results / "results.json").read_text())
    assert data["format"] == "robust_nb.results/1"
    assert data["records"]["pgd/clean"]["ci"] == pytest.approx([rec.low, rec.high])
    assert load() == {"pgd/clean": rec}
    assert sorted(p.name for p in results.iterdir()) == [".results.json.lock", "results.json"]


def test_repeated_key_replaces_and_notebook_comes_from_env(results, monkeypatch):
    monkeypatch.setenv(report.ENV_NOTEBOOK, "05_adversarial_training")
    record("pgd/clean", 0.5, n=10)
    record("pgd/clean", 0.7, n=10)
    record("fgsm/clean", 0.6, n=10, notebook="explicit")
    records = load()
    assert set(records) == {"pgd/clean", "fgsm/clean"}
    assert records["pgd/clean"].value == 0.7
    assert records["pgd/clean"].notebook == "05_adversarial_training"
    assert records["fgsm/clean"].notebook == "explicit"


def test_units_are_inferred_and_explicit_intervals_kept(results):
    ece = record("classical/ece", 0.046, n=1000, ci=(0.031, 0.062), confidence=0.9)
    assert (ece.unit, ece.low, ece.high, ece.confidence) == ("fraction", 0.031, 0.062, 0.9)
    assert str(ece) == "classical/ece = 4.60% (90% CI 3.10–6.20%, n=1000)"
    assert record("classical/ece_ts", 0.0083).unit == "fraction"
    secs = record("pgd/seconds_per_epoch", 12.34)
    assert (secs.unit, secs.cell()) == ("s", "12.3 s")
    plain = record("fire/beta", 6)
    assert (plain.unit, plain.low, plain.cell()) == (None, None, "6")
    assert [record("fire/x", v).cell() for v in (0.004, 0.31, 123.4, 2.5e7)] == [
        "0.004", "0.31", "123", "2.5e+07"]
    acc = record("trades/autoattack", Accuracy(0.45, 200))
    assert (acc.n, acc.low, acc.high) == (200, *wilson_interval(90, 200))


@pytest.mark.parametrize("args, kwargs, match", [
    (("pgd", 0.5), {}, "method/metric"),
    (("PGD/clean", 0.5), {}, "method/metric"),
    (("pgd/clean/x", 0.5), {}, "method/metric"),
    (("pgd/clean", float("nan")), {"n": 10}, "finite"),
    (("pgd/clean", "0.5"), {}, "number"),
    (("pgd/clean", 93.1), {"n": 1000}, "not 93.1"),
    (("pgd/clean", 0.9312), {"n": 1000}, "not a count out of n=1000"),
    (("pgd/clean", 0.5), {"n": 0}, "positive integer"),
    (("pgd/clean", 0.5), {"n": 10, "ci": (0.6, 0.4)}, "low <= high"),
    (("pgd/clean", 0.5), {"ci": 0.4}, "pair"),
    (("classical/ece", 0.05), {"confidence": 0.9}, "pass ci"),
    (("classical/ece", 0.05), {"ci": (0.04, 0.06), "confidence": 90}, r"\(0, 1\)"),
    (("pgd/clean", Accuracy(0.5, 10)), {"n": 20}, "contradicts"),
])
def test_bad_records_raise_and_write_nothing(results, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        record(*args, **kwargs)
    assert not (results / "results.json").exists()


def test_clear_forgets_one_notebook(results):
    record("pgd/clean", 0.5, n=10, notebook="05")
    record("pgd/autoattack", 0.2, n=10, notebook="07")
    assert report.clear(notebook="05") == 1
    assert set(load()) == {"pgd/autoattack"}
    assert report.clear() == 1 and load() == {}


def test_foreign_or_broken_file_is_refused(results):
    results.mkdir()
    (results / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load()
    (results / "results.json").write_text('{"records": {}}')
    with pytest.raises(ValueError, match="not a robust_nb results file"):
        record("pgd/clean", 0.5, n=10)


def test_atomic_write_keeps_the_old_file_when_the_write_fails(results, monkeypatch):
    record("pgd/clean", 0.5, n=10)
    before = (results / "results.json").read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        record("pgd/clean", 0.7, n=10)
    assert (results / "results.json").read_bytes() == before
    assert sorted(p.name for p in results.iterdir()) == [".results.json.lock", "results.json"]


def test_default_results_dir(monkeypatch):
    monkeypatch.delenv(report.ENV_RESULTS, raising=False)
    root = Path(report.__file__).resolve().parents[1]
    assert report.default_results_dir("full") == root / "results" / "full"
    monkeypatch.setenv("ROBUST_NB_PROFILE", "quick")
    assert report.default_results_dir() == root / "results" / "quick"
    monkeypatch.setenv(report.ENV_RESULTS, "/somewhere/else")
    assert report.default_results_dir("full") == Path("/somewhere/else")


def test_results_md_quick_has_every_record_and_dashes(results):
    record("pgd/clean", 0.9, n=100)
    record("pgd/autoattack", 0.45, n=100)
    record("classical/clean", 0.98, n=100)
    record("classical/ece", 0.046, n=100, ci=(0.03, 0.06), confidence=0.9)
    record("mixup/nll", 0.31)
    path = write_results_md("quick")
    assert path == results / "results.md"
    text = path.read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header == "| method | clean | AutoAttack | ECE | nll |"
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
    assert rows["PGD-AT"] == (f"| PGD-AT | {Accuracy(0.9, 100):short} | "
                              f"{Accuracy(0.45, 100):short} | — | — |")
    assert rows["classical"] == (f"| classical | {Accuracy(0.98, 100):short} | — | "
                                 f"4.60% (3.00–6.00) | — |")
    assert rows["mixup"] == "| mixup | — | — | — | 0.31 |"
    assert "published" not in header and "Zhang" not in text  # MNIST: papers do not apply
    assert "| classical/ece | 4.60% | 3.00–6.00 (90%) | 100 |" in text


def test_results_md_full_cites_published_numbers(results):
    record("trades/clean", 0.85, n=1000)
    text = write_results_md("full").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header == "| method | clean | published (CIFAR-10) |"
    trades = next(line for line in text.splitlines() if line.startswith("| TRADES"))
    assert "WRN-34-10: clean 84.92%, paper's attack 56.43%, AA 53.08%" in trades
    fgsm = next(line for line in text.splitlines() if line.startswith("| FGSM-RS"))
    assert fgsm.startswith("| FGSM-RS (fast AT) | — | PreAct ResNet-18: clean 86.06%")
    assert "ECE 4.60%, ECE after TS 0.83%" in text
    for i, p in enumerate(PUBLISHED, 1):
        assert f"\n{i}. {p.model}" in text and p.link in text and p.verified_in in text


def test_results_md_without_records(results):
    text = write_results_md("quick").read_text()
    assert "No headline numbers were recorded yet" in text and "| method" not in text


def test_published_numbers_are_fractions_with_sources():
    assert {p.method for p in PUBLISHED} <= set(report.METHODS)
    for p in PUBLISHED:
        assert p.link.startswith("https://") and p.verified_in and p.citation
        for metric, value in p.metrics:
            assert metric in {"clean", "pgd", "autoattack", "ece", "ece_ts", "reported"}
            assert 0.0 <= value <= 1.0
    trades = next(p for p in PUBLISHED if p.method == "trades")
    assert dict(trades.metrics) == {"clean": 0.8492, "reported": 0.5643, "autoattack": 0.5308}

