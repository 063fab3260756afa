"""Student copies of the course notebooks: solutions cleared, checks kept, nbgrader metadata.

In the instructor notebooks (``notebooks/``) every coding exercise is a code cell whose solution
sits between nbgrader's markers::

    def fgsm_attack(model, x, y, eps):
        \"\"\"...\"\"\"
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

and the next code cell checks it with a function of :mod:`robust_nb.exercises`
(``rnb.exercises.check_fgsm(fgsm_attack)``). :func:`student_copy` turns such a notebook into the
copy a student gets:

1. :func:`annotate` -- the nbgrader *source* version: nbgrader metadata on every exercise cell (a
   solution cell, ``grade_id`` ``<notebook>-<exercise>``) and every check cell (a locked grade
   cell worth :data:`POINTS` point), and a header cell after the title saying how to check one's
   work;
2. every solution region replaced by ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` at the
   marker's indentation (nbgrader's ``ClearSolutions``);
3. outputs and execution counts cleared (``ClearOutput``), exercise and check cells locked
   against deletion, check cells also against editing (``LockCells``).

Steps 2-3 are what nbgrader's ``generate_assignment`` does to the annotated notebook (a test runs
nbgrader's own preprocessors and compares), so a teacher may use either: our copies directly, or
``python -m robust_nb student --with-solutions`` to get the annotated source notebooks and let
nbgrader release, collect and autograde them.

``python -m robust_nb student [NOTEBOOK ...] --out DIR`` writes the copies (all notebooks by
default); errors (an unknown notebook, a marker without its partner, an exercise without a check,
an output folder that is the instructor's or would overwrite files) raise :class:`StudentCopyError`
with a message that says what to fix.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")     # nbgrader's stub for Python
SCHEMA_VERSION = 3                                             # nbgrader's cell metadata schema
POINTS = 1                                                     # per check cell
HEADER_ID = "student-copy-header"
_CHECK = re.compile(r"rnb\.exercises\.check_(\w+)\(")
_OUTPUT_METADATA = ("collapsed", "scrolled")                  # dropped with the outputs (nbconvert)


class StudentCopyError(ValueError):
    """A notebook cannot be turned into a student copy; the message says why and what to fix."""


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def find_exercises(nb, name: str) -> list[tuple[int, int, str]]:
    """``(exercise cell index, check cell index, exercise name)`` for every exercise of ``nb``
    (``name``: the notebook's name, for messages). The exercise name is the ``check_<name>`` the
    check cell calls. Raises :class:`StudentCopyError` on a marker outside a code cell, a BEGIN
    without END (or nested, or an END alone), or an exercise not followed by its check cell."""
    found = []
    for i, cell in enumerate(nb.cells):
        src = _source(cell)
        if BEGIN not in src and END not in src:
            continue
        where = f"{name}, cell {i}"
        if cell.cell_type != "code":
            raise StudentCopyError(f"{where}: solution markers in a {cell.cell_type} cell; only "
                                   f"code cells hold solutions")
        _check_markers(src, where)
        nxt = next((j for j in range(i + 1, len(nb.cells)) if nb.cells[j].cell_type == "code"),
                   None)
        match = _CHECK.search(_source(nb.cells[nxt])) if nxt is not None else None
        if match is None or BEGIN in _source(nb.cells[nxt]):
            raise StudentCopyError(f"{where}: the exercise has no check cell after it; the next "
                                   f"code cell must call rnb.exercises.check_<exercise>(...)")
        found.append((i, nxt, match.group(1)))
    names = [n for _, _, n in found]
    if len(set(names)) != len(names):
        raise StudentCopyError(f"{name}: two exercises are checked by the same check "
                               f"({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                               f"grade ids must be unique")
    return found


def _check_markers(src: str, where: str) -> None:
    inside = False
    for k, line in enumerate(src.split("\n"), start=1):
        if BEGIN in line:
            if inside:
                raise StudentCopyError(f"{where}, line {k}: a second {BEGIN!r} before the "
                                       f"{END!r} of the first")
            inside = True
        elif END in line:
            if not inside:
                raise StudentCopyError(f"{where}, line {k}: {END!r} without a {BEGIN!r} before it")
            inside = False
    if inside:
        raise StudentCopyError(f"{where}: {BEGIN!r} without a matching {END!r}")


def clear_solution(src: str) -> str:
    """``src`` with every solution region (markers included) replaced by :data:`STUB`, indented
    like its BEGIN line (nbgrader's ``ClearSolutions``)."""
    out, inside = [], False
    for line in src.split("\n"):
        if BEGIN in line:
            inside = True
            indent = re.match(r"\s*", line).group(0)
            out += [indent + stub for stub in STUB]
        elif END in line:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def _metadata(grade_id: str, *, solution: bool) -> dict:
    meta = {"grade": not solution, "grade_id": grade_id, "locked": not solution,
            "schema_version": SCHEMA_VERSION, "solution": solution, "task": False}
    if not solution:
        meta["points"] = POINTS
    return meta


def header_text(exercises: list[str]) -> str:
    names = ", ".join(f"`{n}`" for n in exercises)
    return (
        "> **Student copy.** The code cells with `# YOUR CODE HERE` are yours: replace "
        "`raise NotImplementedError()` with your code and run the cell, then run the **check cell** "
        "right below it. The check compares your function with the course's own implementation "
        "(`robust_nb`) on fresh random inputs, including edge cases, and either prints "
        "`check passed` or tells you what is wrong (wrong shape, outside the eps-ball, off by a "
        "sign...). Until your function passes, the cells after it use the course's implementation "
        "and print a note saying so, so the rest of the notebook still runs.\n>\n"
        f"> Exercises in this notebook: {names}. The open questions under **Exercises** at the end "
        "are answered in words. Before handing in: *Kernel → Restart Kernel and Run All Cells*, "
        "and check that every check cell prints `check passed`.")


def annotate(nb, name: str):
    """A copy of ``nb`` with nbgrader metadata on its exercise and check cells and the student
    header after the title cell: the nbgrader source version (solutions still in)."""
    exercises = find_exercises(nb, name)
    if not exercises:
        raise StudentCopyError(f"{name} has no exercise (no code cell with {BEGIN!r}); nothing "
                               f"to hand out")
    import nbformat

    nb = copy.deepcopy(nb)
    for solution, check, exercise in exercises:
        grade_id = f"{name}-{exercise}"
        nb.cells[solution].metadata["nbgrader"] = _metadata(grade_id, solution=True)
        nb.cells[check].metadata["nbgrader"] = _metadata(f"{grade_id}-check", solution=False)
    if not any(cell.get("id") == HEADER_ID for cell in nb.cells):
        header = nbformat.v4.new_markdown_cell(header_text([e for _, _, e in exercises]))
        header["id"] = HEADER_ID
        nb.cells.insert(1, header)
    return nb


def student_copy(nb, name: str):
    """The student copy of ``nb`` (``name``: the notebook's name): :func:`annotate`, solutions
    cleared, outputs cleared, exercise and check cells locked, as nbgrader's
    ``generate_assignment`` would."""
    nb = annotate(nb, name)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code":
            cell.source = clear_solution(_source(cell))
            cell.outputs = []
            cell.execution_count = None
            for key in _OUTPUT_METADATA:
                cell.metadata.pop(key, None)
        if meta.get("solution"):
            cell.metadata["deletable"] = False
        elif meta.get("grade"):
            cell.metadata["deletable"] = False
            cell.metadata["editable"] = False
    return nb


def write_copies(paths: list[Path], out_dir: Path, *, with_solutions: bool = False,
                 force: bool = False) -> list[Path]:
    """Write the student copy (or, ``with_solutions``, the annotated nbgrader source version) of
    every notebook in ``paths`` to ``out_dir``; return the paths written. All notebooks are
    converted before anything is written, so an error leaves ``out_dir`` untouched."""
    import nbformat

    from .files import atomic_write

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise StudentCopyError(f"--out {out_dir} is a file; give a folder")
    sources = {p.resolve().parent for p in paths}
    if out_dir.resolve() in sources:
        raise StudentCopyError(f"--out {out_dir} is the folder of the instructor notebooks; the "
                               f"copies would overwrite them. Choose another folder")
    targets = [out_dir / p.name for p in paths]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise StudentCopyError(f"{len(existing)} file(s) exist already in {out_dir} (e.g. "
                               f"{existing[0].name}); pass --force to overwrite them")
    convert = annotate if with_solutions else student_copy
    copies = [convert(nbformat.read(p, as_version=4), p.stem) for p in paths]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StudentCopyError(f"cannot create the output folder {out_dir}: {err}") from err
    for nb, target in zip(copies, targets):
        nbformat.validate(nb)
        atomic_write(target, nbformat.writes(nb))
    return targets
