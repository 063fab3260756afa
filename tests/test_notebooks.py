"""The notebooks' hygiene (stored clean, same skeleton) and the headless runner.

nbval executes the notebooks themselves (pytest collects notebooks/ with --nbval-lax).
"""

import json
import re

import pytest

from robust_nb.__main__ import NOTEBOOK_DIR, find_notebooks, main

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
FORBIDDEN = {
    r"sys\.path": "no sys.path hacks: the package is installed",
    r"^\s*[!%]pip": "no pip inside notebooks",
    r"\.cuda\(": "the device comes from setup()",
    r"device\s*=\s*['\"]cuda": "the device comes from setup()",
    r"cfg\.profile\s*[=!]=": "notebooks never branch on the profile",
}


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _source(cell):
    return "".join(cell["source"])


def test_there_are_notebooks_and_they_are_numbered():
    names = [p.name for p in NOTEBOOKS]
    assert names and names[0] == "00_introduction.ipynb"
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n) for n in names), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    dirty = [i for i, c in enumerate(_cells(path))
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_skeleton(path):
    cells = _cells(path)
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    code = [_source(c) for c in cells if c["cell_type"] == "code"]
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).startswith("# ")
    for heading in ("Learning goals", "Summary", "Exercises", "References"):
        assert heading in markdown, f"{path.name} lacks a '{heading}' section"
    assert sum("rnb.setup(" in c for c in code) == 1, f"{path.name}: exactly one setup cell"
    assert sum(bool(re.search(r"^assert ", c, re.M)) for c in code) >= 3, \
        f"{path.name}: sections must end with asserts on the numbers they produced"
    for pattern, why in FORBIDDEN.items():
        bad = [c for c in code if re.search(pattern, c, re.M)]
        assert not bad, f"{path.name}: {why}: {bad[0][:80]!r}"


def test_find_notebooks_resolves_numbers_and_names():
    assert find_notebooks(["00"])[0].name == "00_introduction.ipynb"
    assert find_notebooks(["00_introduction"]) == find_notebooks(["00"])
    assert find_notebooks([]) == NOTEBOOKS
    with pytest.raises(ValueError, match="available: 00_introduction"):
        find_notebooks(["99"])


def test_cli_runs_a_notebook_and_saves_the_executed_copy(tmp_path, capsys):
    assert main(["run", "00", "--profile", "quick", "--out", str(tmp_path)]) == 0
    executed = json.loads((tmp_path / "00_introduction.ipynb").read_text())
    outputs = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert any(o.get("output_type") == "display_data" for o in outputs)  # the figures
    assert "profile=quick" in json.dumps(outputs)
    assert "done: 1 notebook(s)" in capsys.readouterr().out


def test_cli_reports_unknown_notebooks(capsys):
    assert main(["run", "nonexistent"]) == 2
    assert "no single notebook matches 'nonexistent'" in capsys.readouterr().err
