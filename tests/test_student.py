"""Student copies (robust_nb.student, ``python -m robust_nb student``): no solution survives, the
metadata is nbgrader's (checked against nbgrader's own generate_assignment), errors are clear,
and an executed copy fails exactly at its check cells -- and passes with the solutions put back.

Executing whole notebooks is what costs: every notebook's exercise and check cells run together
in one small notebook (cell level, a few seconds), and two notebooks that train nothing (00, 01)
run whole in the quick profile."""

import importlib.util
import os
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from robust_nb.__main__ import NOTEBOOK_DIR, execute_notebook, main
from robust_nb.student import (
    BEGIN,
    END,
    HEADER_ID,
    STUB,
    StudentCopyError,
    annotate,
    find_exercises,
    student_copy,
)

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _read(path):
    return nbformat.read(path, as_version=4)


def _solution_lines(nb) -> set[str]:
    """The lines inside solution regions that occur nowhere else in the notebook."""
    inside, outside, within = set(), set(), False
    for cell in nb.cells:
        for line in cell.source.split("\n"):
            if BEGIN in line or END in line:
                within = BEGIN in line
                continue
            (inside if within else outside).add(line.strip())
    return {line for line in inside - outside if len(line) >= 8}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_clears_every_solution_and_keeps_the_rest(path):
    nb = _read(path)
    copy = student_copy(nb, path.stem)
    nbformat.validate(copy)
    secret = _solution_lines(nb)
    assert secret, f"{path.name} has no solution to clear"
    code = "\n".join(cell.source for cell in copy.cells if cell.cell_type == "code")  # prose may hint
    assert not [line for line in secret if line in code]
    text = "\n".join(cell.source for cell in copy.cells)
    assert BEGIN not in text and END not in text
    exercises = find_exercises(nb, path.stem)
    # every solution region became the stub, at the BEGIN marker's indentation
    for solution, _, _ in exercises:
        begins = [line for line in nb.cells[solution].source.split("\n") if BEGIN in line]
        (cell,) = [c for c in copy.cells if c.get("id") == nb.cells[solution].get("id")]
        for begin in begins:
            indent = begin[: len(begin) - len(begin.lstrip())]
            assert f"{indent}{STUB[0]}\n{indent}{STUB[1]}" in cell.source
    # the other cells are the instructor's, in order, after the header
    assert copy.cells[1].get("id") == HEADER_ID and "check cell" in copy.cells[1].source
    solution_ids = {nb.cells[s].get("id") for s, _, _ in exercises}
    kept = [c for c in copy.cells if c.get("id") not in solution_ids | {HEADER_ID}]
    assert [c.source for c in kept] == [c.source for c in nb.cells if c.get("id") not in solution_ids]
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in copy.cells if c.cell_type == "code")


def test_nbgrader_metadata_on_exercise_and_check_cells_only():
    grade_ids = []
    for path in NOTEBOOKS:
        copy = student_copy(_read(path), path.stem)
        graded = [c for c in copy.cells if "nbgrader" in c.metadata]
        assert len(graded) >= 2 and len(graded) % 2 == 0
        for solution, check in zip(graded[::2], graded[1::2]):
            s, c = solution.metadata["nbgrader"], check.metadata["nbgrader"]
            assert (s["solution"], s["grade"], s["locked"]) == (True, False, False)
            assert (c["solution"], c["grade"], c["locked"], c["points"]) == (False, True, True, 1)
            assert c["grade_id"] == s["grade_id"] + "-check" and s["schema_version"] == 3
            assert solution.metadata["deletable"] is False and check.metadata["editable"] is False
            assert "rnb.exercises.check_" in check.source
            grade_ids += [s["grade_id"], c["grade_id"]]
    assert len(grade_ids) == len(set(grade_ids))


@pytest.mark.skipif(importlib.util.find_spec("nbgrader") is None,
                    reason="nbgrader is not installed (pip install -e .[test] installs it)")
def test_nbgrader_generate_assignment_makes_the_same_copies(tmp_path):
    """nbgrader's own generate_assignment on our annotated source notebooks gives our student
    copies, except for the two keys nbgrader adds to each graded cell's metadata for its
    gradebook: ``checksum`` and ``cell_type``."""
    names = ["04_attacks", "09_evaluating_defenses"]        # two exercises; a nested function
    source = tmp_path / "source" / "ps1"
    source.mkdir(parents=True)
    instructor = {n: _read(NOTEBOOK_DIR / f"{n}.ipynb") for n in names}  # read once: others edit
    for name, nb in instructor.items():
        nbformat.write(annotate(nb, name), source / f"{name}.ipynb")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", "ps1",
                           f"--CourseDirectory.root={tmp_path}", "--force"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for name, nb in instructor.items():
        theirs = _read(tmp_path / "release" / "ps1" / f"{name}.ipynb")
        for cell in theirs.cells:
            for key in ("checksum", "cell_type"):
                cell.metadata.get("nbgrader", {}).pop(key, None)
        assert theirs == student_copy(nb, name)


# -- errors that say what to fix ------------------------------------------------------------

def _notebook(*cells):
    nb = new_notebook(cells=[new_markdown_cell("# 99 · test")] + [
        new_markdown_cell(src[3:]) if src.startswith("md:") else new_code_cell(src) for src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


CHECK = "rnb.exercises.check_fgsm(fgsm_attack)"


@pytest.mark.parametrize("cells, message", [
    ((f"def f():\n    {BEGIN}\n    return 1\n", CHECK), "without a matching"),
    ((f"def f():\n    return 1\n    {END}", CHECK), "without a '### BEGIN SOLUTION' before it"),
    ((f"{BEGIN}\n{BEGIN}\nx = 1\n{END}", CHECK), "a second"),
    ((f"{BEGIN}\nx = 1\n{END}", "print('no check here')"), "has no check cell after it"),
    ((f"{BEGIN}\nx = 1\n{END}",), "has no check cell after it"),
    ((f"md:{BEGIN}\nanswer\n{END}", CHECK), "only code cells hold solutions"),
    (("x = 1", CHECK), "has no exercise"),
    ((f"{BEGIN}\nx = 1\n{END}", CHECK, f"{BEGIN}\ny = 1\n{END}", CHECK), "the same check"),
])
def test_malformed_exercises_are_errors_with_the_cell(cells, message):
    with pytest.raises(StudentCopyError, match=message):
        student_copy(_notebook(*cells), "99_test")


def test_cli_writes_copies_and_refuses_what_would_lose_work(tmp_path, capsys):
    out = tmp_path / "class"
    assert main(["student", "00", "04", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00_introduction.ipynb", "04_attacks.ipynb"]
    assert "2 student copies" in capsys.readouterr().out
    assert main(["student", "00", "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["student", "00", "--out", str(out), "--force"]) == 0
    assert main(["student", "00", "--out", str(NOTEBOOK_DIR)]) == 2
    assert "would overwrite them" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["student", "00", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["student", "nonexistent", "--out", str(out)]) == 2
    assert "no single notebook matches 'nonexistent'" in capsys.readouterr().err
    source = tmp_path / "source"
    assert main(["student", "04", "--out", str(source), "--with-solutions"]) == 0
    text = (source / "04_attacks.ipynb").read_text()
    assert BEGIN in text and '"grade_id": "04_attacks-fgsm"' in text


def test_cli_writes_every_notebook_by_default(tmp_path):
    assert main(["student", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in NOTEBOOKS]


# -- executed copies fail exactly at their check cells ----------------------------------------

def _errors(nb) -> dict[str, str]:
    """cell id -> the error's name and message, for every cell that raised."""
    return {cell.get("id"): f"{o['ename']}: {o['evalue']}" for cell in nb.cells
            if cell.cell_type == "code" for o in cell.get("outputs", []) if o["output_type"] == "error"}


def _restore_solutions(copy, instructor):
    sources = {c.get("id"): c.source for c in instructor.cells}
    for cell in copy.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = sources[cell.get("id")]
    return copy


def _run(nb, path, out_dir):
    nbformat.write(nb, path)
    return execute_notebook(path, out_dir, timeout=600, allow_errors=True)[0]


def _check_ids(nb):
    return {c.get("id") for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}


def test_every_exercise_cell_level_fails_at_its_check_and_passes_with_the_solution(tmp_path):
    """All notebooks' exercise and check cells in one notebook: the student version errors at
    every check cell (and nowhere else), saying the exercise is not written yet; with the
    solutions put back, nothing errors."""
    cells, instructor_cells = [new_code_cell("import torch\nimport torch.nn.functional as F\n"
                                             "import robust_nb as rnb")], []
    for path in NOTEBOOKS:
        instructor = _read(path)
        copy = student_copy(instructor, path.stem)
        for s, c, _ in find_exercises(copy, path.stem):
            cells += [copy.cells[s], copy.cells[c]]
        instructor_cells.append(instructor)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    executed = _run(nb, tmp_path / "exercises.ipynb", tmp_path / "out")
    errors = _errors(executed)
    assert set(errors) == _check_ids(nb), errors
    assert all(e.startswith("ExerciseFailed") and "not written yet" in e for e in errors.values())
    restored = nb
    for instructor in instructor_cells:
        restored = _restore_solutions(restored, instructor)
    executed = _run(restored, tmp_path / "restored.ipynb", tmp_path / "out")
    assert _errors(executed) == {}


@pytest.mark.parametrize("name", ["00_introduction", "01_architectures"])
def test_a_whole_student_copy_fails_only_at_its_checks(tmp_path, name):
    """The quick profile, whole notebooks that train nothing: the copy runs to the end, errors
    exactly at its check cells (later cells use the package's function and say so), and with the
    solutions put back runs without an error."""
    instructor = _read(NOTEBOOK_DIR / f"{name}.ipynb")
    copy = student_copy(instructor, name)
    work = tmp_path / "notebooks"                 # beside the instructor's, as a class would have
    work.mkdir()
    executed = _run(copy, work / f"{name}.ipynb", tmp_path / "out")
    errors = _errors(executed)
    assert set(errors) == _check_ids(copy), errors
    notes = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "has not passed its check yet" in notes
    executed = _run(_restore_solutions(copy, instructor), work / f"{name}.ipynb", tmp_path / "out")
    assert _errors(executed) == {}
    shutil.rmtree(work)
