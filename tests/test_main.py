"""``python -m robust_nb reproduce``: results.md and figures from a tiny synthetic notebook."""

import base64
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from robust_nb.__main__ import main, notebook_figures, save_figures, slugify
from robust_nb.stats import Accuracy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FIGURE = ("import matplotlib.pyplot as plt\n"
          "fig, ax = plt.subplots(figsize=(2, 2))\n"
          "ax.plot([0, 1], [{0}, 1])\n"
          "plt.show()")


def _synthetic(path):
    """A notebook that records two accuracies and draws three figures in two sections."""
    nb = new_notebook(cells=[
        new_markdown_cell("# A synthetic notebook\n\nIt records numbers and draws."),
        new_code_cell("import os\nimport robust_nb as rnb\n"
                      "rnb.report.record('pgd/clean', 0.9, n=100)\n"
                      "rnb.report.record('pgd/autoattack', 0.45, n=100)\n"
                      "print(os.environ['ROBUST_NB_NOTEBOOK'], os.environ['ROBUST_NB_PROFILE'])"),
        new_markdown_cell("## Eps sweeps\n\nTwo figures."),
        new_code_cell(FIGURE.format(0)),
        new_code_cell(FIGURE.format(0.5)),
        new_markdown_cell("Prose without a heading keeps the section."),
        new_code_cell(FIGURE.format(0.2)),
        new_markdown_cell("## Fisher–Rao: the end"),
        new_code_cell(FIGURE.format(0.3)),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def test_reproduce_writes_results_md_and_named_figures(tmp_path, capsys):
    notebook = _synthetic(tmp_path / "99_synthetic.ipynb")
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    stale = out / "figures" / "99_synthetic--gone-1.png"
    stale.write_bytes(PNG_MAGIC)
    assert main(["reproduce", str(notebook), "--profile", "quick", "--out", str(out)]) == 0

    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["99_synthetic--eps-sweeps-1.png", "99_synthetic--eps-sweeps-2.png",
                       "99_synthetic--eps-sweeps-3.png", "99_synthetic--fisher-rao-the-end-1.png"]
    assert all((out / "figures" / f).read_bytes().startswith(PNG_MAGIC) for f in figures)

    md = (out / "results.md").read_text()
    assert md.startswith("# Results (quick profile)")
    assert (f"| PGD-AT | {Accuracy(0.9, 100):short} | {Accuracy(0.45, 100):short} |") in md
    assert "| pgd/clean | 90.0% |" in md and "| 99_synthetic |" in md
    records = json.loads((out / "results.json").read_text())["records"]
    assert {k: r["notebook"] for k, r in records.items()} == {
        "pgd/clean": "99_synthetic", "pgd/autoattack": "99_synthetic"}

    executed = nbformat.read(out / "99_synthetic.ipynb", as_version=4)
    assert "99_synthetic quick" in executed.cells[1].outputs[0]["text"]
    printed = capsys.readouterr().out
    assert f"results table: {out / 'results.md'}" in printed
    assert f"figures: 4 PNG(s) in {out / 'figures'}/" in printed


def test_failing_notebook_exits_1_and_keeps_what_it_recorded(tmp_path, capsys):
    nb = new_notebook(cells=[
        new_markdown_cell("# Fails halfway"),
        new_code_cell("import robust_nb as rnb\nrnb.report.record('fgsm/clean', 0.5, n=10)"),
        new_code_cell("raise RuntimeError('catastrophic overfitting')"),
    ])
    nbformat.write(nb, tmp_path / "98_fails.ipynb")
    out = tmp_path / "out"
    assert main(["reproduce", str(tmp_path / "98_fails.ipynb"), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "98_fails.ipynb failed" in captured.err and "catastrophic overfitting" in captured.err
    assert "| FGSM-RS (fast AT) | 50.0% (23.7–76.3) |" in (out / "results.md").read_text()
    assert (out / "98_fails.ipynb").is_file()


def test_bad_input_exits_with_code_2(tmp_path, capsys, monkeypatch):
    assert main(["reproduce", "no_such_notebook", "--out", str(tmp_path)]) == 2
    assert "no single notebook matches 'no_such_notebook'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--profile", "huge", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    monkeypatch.setenv("ROBUST_NB_PROFILE", "huge")
    assert main(["reproduce", "00", "--out", str(tmp_path)]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    monkeypatch.setenv("ROBUST_NB_PROFILE", "quick")
    assert main(["run", "00", "--timeout", "0", "--out", str(tmp_path)]) == 2
    assert "--timeout must be at least 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def _png_output(payload: bytes):
    return new_output("display_data", data={"image/png": base64.b64encode(payload).decode(),
                                            "text/plain": "<Figure>"})


def test_figures_are_named_after_the_nearest_heading(tmp_path):
    nb = new_notebook(cells=[
        new_code_cell("plot()", outputs=[_png_output(PNG_MAGIC + b"0")]),
        new_markdown_cell("# Title\n\n## Attacks\n```python\n# not a heading\n```"),
        new_code_cell("plot()", outputs=[_png_output(PNG_MAGIC + b"1"),
                                         new_output("stream", name="stdout", text="hi"),
                                         _png_output(PNG_MAGIC + b"2")]),
        new_markdown_cell("### Attacks"),
        new_code_cell("plot()", outputs=[_png_output(PNG_MAGIC + b"3")]),
    ])
    assert notebook_figures(nb) == [("top", PNG_MAGIC + b"0"), ("attacks", PNG_MAGIC + b"1"),
                                    ("attacks", PNG_MAGIC + b"2"), ("attacks", PNG_MAGIC + b"3")]
    paths = save_figures(nb, "04_attacks", tmp_path)
    assert [p.name for p in paths] == ["04_attacks--top-1.png", "04_attacks--attacks-1.png",
                                       "04_attacks--attacks-2.png", "04_attacks--attacks-3.png"]
    assert paths[3].read_bytes() == PNG_MAGIC + b"3"


def test_slugify():
    assert slugify("Eps sweeps: L-inf vs L2") == "eps-sweeps-l-inf-vs-l2"
    assert slugify("Fisher–Rao (FIRE) — régime") == "fisher-rao-fire-regime"
    assert slugify("!!!") == "section"
    assert len(slugify("word " * 40)) <= 60
