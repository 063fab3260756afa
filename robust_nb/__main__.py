"""Command line: run the course headlessly, or reproduce its results.

``python -m robust_nb run [NOTEBOOK ...]`` executes the notebooks in order, in the current profile
(``--profile`` or ``$ROBUST_NB_PROFILE``, else auto), and writes the executed copies, with their
outputs, to ``results/<profile>/`` (``--out`` to change it). The run stops at the first failing
cell and prints that cell's error.

``python -m robust_nb reproduce [NOTEBOOK ...]`` does the same, then writes ``results.md`` (the
numbers the notebooks recorded with ``rnb.report.record``, with their intervals, and in the full
profile the published numbers) and every figure of the executed notebooks as
``figures/<notebook>--<section>-<k>.png``, the section being the nearest markdown heading above
the figure.

``python -m robust_nb student [NOTEBOOK ...] --out DIR`` writes student copies: solutions cleared,
outputs cleared, nbgrader metadata, a header saying how to check one's work (``--with-solutions``:
the annotated nbgrader source notebooks instead; see :mod:`robust_nb.student`).

``python -m robust_nb bench`` times PGD-10 and training epochs against torchattacks and the
textbook loops on the profile's model, in one run: a table and a JSON (see :mod:`robust_nb.bench`).

``python -m robust_nb run --smoke [NOTEBOOK ...]`` (or ``$ROBUST_NB_SMOKE=1``) runs them in the full
profile at tiny sizes on a fake CIFAR-10, every cell even after an error, into ``results/smoke/``,
and fails on any error but an ``AssertionError`` (see :mod:`robust_nb.smoke`).

Each kernel gets ``$ROBUST_NB_PROFILE``, ``$ROBUST_NB_RESULTS`` (the output folder, where
``rnb.report.record`` writes), ``$ROBUST_NB_NOTEBOOK`` (the notebook's name) and
``$ROBUST_NB_TEXT_PROGRESS=1`` (text progress bars: no front-end stores widget state). Bad arguments
exit with code 2, a failing notebook with 1.

>>> main(["reproduce", "04", "--profile", "quick"])                    # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

from .files import atomic_write

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
FIGURE_DIR = "figures"


class NotebookFailed(RuntimeError):
    """A cell of a notebook raised."""


def find_notebooks(names: list[str], notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Resolve names ("04", "04_attacks", "notebooks/04_attacks.ipynb") to notebook paths, in
    order; ``ValueError`` names the available notebooks when a name matches none or several."""
    available = sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        if not available:
            raise FileNotFoundError(f"no notebooks found in {notebook_dir}")
        return available
    chosen = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.exists():
            chosen.append(path.resolve())
            continue
        matches = [p for p in available if p.stem == name or p.stem.startswith(f"{name}_")
                   or p.name == name]
        if len(matches) != 1:
            known = ", ".join(p.stem for p in available)
            raise ValueError(f"no single notebook matches {name!r}; available: {known}")
        chosen.append(matches[0])
    return sorted(set(chosen), key=lambda p: p.name)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables (inherited by the kernels started meanwhile), then restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute_notebook(path: Path, out_dir: Path, timeout: int = 1800, allow_errors: bool = False):
    """Execute one notebook with nbclient (cwd = its folder) and write the executed copy to
    ``out_dir``; return ``(notebook, seconds)``. The kernel records into ``out_dir``
    (``$ROBUST_NB_RESULTS``) under the notebook's name (``$ROBUST_NB_NOTEBOOK``); the records
    that notebook made in an earlier run are forgotten first. Raises :class:`NotebookFailed`
    (the executed copy up to the failing cell is still written); with ``allow_errors`` every
    cell runs and errors stay in the cells' outputs (the smoke run reads them there)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from . import report
    from .progress import ENV_TEXT_PROGRESS, progress

    nb = nbformat.read(path, as_version=4)
    n_code = sum(cell.cell_type == "code" for cell in nb.cells)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    report.clear(notebook=path.stem, results_dir=out_dir)
    bar = progress(total=n_code, desc=path.stem, unit="cell", leave=True, mininterval=0.1)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            allow_errors=allow_errors,
                            on_cell_executed=lambda **_: bar.update(1))
    start = time.perf_counter()
    try:
        with _environment(**{report.ENV_RESULTS: str(out_dir), report.ENV_NOTEBOOK: path.stem,
                             ENV_TEXT_PROGRESS: "1"}):     # no front-end draws widgets here
            client.execute()
    except CellExecutionError as err:
        raise NotebookFailed(f"{path.name} failed:\n{err}") from None
    finally:
        bar.close()
        atomic_write(out_dir / path.name, nbformat.writes(nb))
    return nb, time.perf_counter() - start


def run_notebook(path: Path, out_dir: Path, timeout: int = 1800) -> float:
    """Execute one notebook (:func:`execute_notebook`) and return the seconds it took."""
    return execute_notebook(path, out_dir, timeout)[1]


# -- figures ---------------------------------------------------------------------------------

_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")


def slugify(text: str, max_length: int = 60) -> str:
    """"Eps sweeps: L-inf vs L2" -> "eps-sweeps-l-inf-vs-l2" (ASCII, lower case, dashes).

    Accents are dropped ("é" -> "e"); any other run of non-alphanumerics becomes one dash.

    >>> slugify("3. Fisher–Rao (FIRE) & `TRADES`, régime")
    '3-fisher-rao-fire-trades-regime'
    """
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "section"


def _last_heading(markdown: str) -> str | None:
    heading, fenced = None, False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            heading = m.group(2)
    return heading


def notebook_figures(nb) -> list[tuple[str, bytes]]:
    """The PNG outputs of an executed notebook as ``(section slug, png bytes)``, in order; the
    section is the nearest markdown heading above the output's cell ("top" before any)."""
    section, figures = "top", []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heading = _last_heading("".join(cell.source))
            if heading is not None:
                section = slugify(heading)
        elif cell.cell_type == "code":
            for output in cell.get("outputs", []):
                png = output.get("data", {}).get("image/png")
                if png is not None:
                    data = "".join(png) if isinstance(png, list) else png
                    figures.append((section, base64.b64decode(data)))
    return figures


def save_figures(nb, stem: str, out_dir: Path) -> list[Path]:
    """Write every PNG of ``nb`` as ``out_dir/<stem>--<section>-<k>.png`` (k counts from 1 in
    each section) after deleting that notebook's PNGs of an earlier run; return the paths."""

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{glob_escape(stem)}--*.png"):
        old.unlink()
    counts: dict[str, int] = {}
    paths = []
    for section, png in notebook_figures(nb):
        counts[section] = counts.get(section, 0) + 1
        paths.append(atomic_write(out_dir / f"{stem}--{section}-{counts[section]}.png", png))
    return paths


def glob_escape(text: str) -> str:
    """Escape glob metacharacters in a file name."""
    return re.sub(r"([*?\[])", r"[\1]", text)


# -- the commands ----------------------------------------------------------------------------

def _run_all(paths: list[Path], out_dir: Path, timeout: int,
             after: Callable[[Path, object], None] | None = None) -> int:
    """Execute ``paths`` in order into ``out_dir``, calling ``after(path, nb)`` for each that
    succeeded; return 0, or 1 at the first failure (reported on stderr)."""
    total = 0.0
    for path in paths:
        try:
            nb, seconds = execute_notebook(path, out_dir, timeout)
        except NotebookFailed as err:
            print(f"\n{err}\nThe executed copy up to the failure is in {out_dir / path.name}",
                  file=sys.stderr)
            return 1
        total += seconds
        print(f"  {path.name}: {seconds:.0f} s")
        if after is not None:
            after(path, nb)
    print(f"done: {len(paths)} notebook(s) in {total:.0f} s; executed copies in {out_dir}/")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robust_nb",
                                     description="Run the robust-nb course notebooks headlessly.")
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"run": "execute notebooks in order and save the executed copies",
             "reproduce": "run, then write results.md and every figure as a PNG"}
    for name, text in helps.items():
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("notebooks", nargs="*", type=str,
                         help="notebook names, numbers or .ipynb paths (default: all, in order)")
        cmd.add_argument("--profile", choices=("quick", "full"), default=None,
                         help="profile for every notebook (default: $ROBUST_NB_PROFILE, else "
                              "auto)")
        cmd.add_argument("--out", type=Path, default=None,
                         help="output folder (default: $ROBUST_NB_RESULTS, else "
                              "results/<profile> at the repository root)")
        cmd.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
        if name == "run":
            cmd.add_argument("--smoke", action="store_true",
                             help="the full profile at tiny sizes on a fake CIFAR-10 (CI): fails "
                                  "on any error but AssertionError; see robust_nb/smoke.py "
                                  "(default --out: results/smoke)")
            cmd.add_argument("--data", type=Path, default=None,
                             help="with --smoke: a folder holding cifar-10-batches-py (default: "
                                  "a fake copy written into a temporary folder)")
    text = "write student copies (solutions and outputs cleared, nbgrader metadata)"
    cmd = sub.add_parser("student", help=text, description=text)
    cmd.add_argument("notebooks", nargs="*", type=str,
                     help="notebook names, numbers or .ipynb paths (default: all)")
    cmd.add_argument("--out", type=Path, required=True, help="folder for the copies")
    cmd.add_argument("--with-solutions", action="store_true",
                     help="write the annotated nbgrader source notebooks (solutions kept) instead")
    cmd.add_argument("--force", action="store_true", help="overwrite copies that exist in --out")
    text = ("time PGD-10 and training epochs against torchattacks and textbook loops, with "
            "achieved FLOP/s over a measured matmul peak (see robust_nb/bench.py)")
    from .bench import add_arguments as add_bench_arguments
    add_bench_arguments(sub.add_parser("bench", help=text, description=text))
    return parser


def _student(args: argparse.Namespace) -> int:
    """The ``student`` command: 0, or 2 with a message on stderr."""
    from .student import write_copies

    try:
        paths = find_notebooks(args.notebooks)
        written = write_copies(paths, args.out, with_solutions=args.with_solutions,
                               force=args.force)
    except (ValueError, FileNotFoundError) as err:       # StudentCopyError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = "nbgrader source notebooks" if args.with_solutions else "student copies"
    print(f"{len(written)} {what} in {Path(args.out).resolve()}/")
    for path in written:
        print(f"  {path.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "student":
        return _student(args)
    if args.command == "bench":
        from .bench import main as bench_main
        return bench_main(args)

    from . import smoke as smoke_run
    from .config import resolve_profile
    from .report import default_results_dir, write_results_md

    try:
        smoke = getattr(args, "smoke", False) or smoke_run.enabled()   # or $ROBUST_NB_SMOKE=1
        if smoke and (args.command != "run" or args.profile == "quick"):
            raise ValueError(f"a smoke run (--smoke or ${smoke_run.ENV_SMOKE}=1) is 'run' in the "
                             f"full profile")
        if getattr(args, "data", None) and not smoke:
            raise ValueError("--data needs --smoke")
        profile, why = ("full", "smoke") if smoke else resolve_profile(args.profile)
        paths = find_notebooks(args.notebooks)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.timeout < 1:
        print(f"error: --timeout must be at least 1 second, got {args.timeout}", file=sys.stderr)
        return 2
    if smoke:
        return smoke_run.run_smoke(paths, (args.out or smoke_run.default_smoke_dir()).resolve(),
                                   args.timeout, data_root=args.data)
    out_dir = (args.out or default_results_dir(profile)).resolve()
    print(f"running {len(paths)} notebook(s) in the {profile} profile ({why}); "
          f"executed copies go to {out_dir}/")
    with _environment(ROBUST_NB_PROFILE=profile):  # the kernels inherit it
        if args.command == "run":
            return _run_all(paths, out_dir, args.timeout)
        figure_dir = out_dir / FIGURE_DIR
        saved: list[Path] = []
        status = _run_all(paths, out_dir, args.timeout,
                          after=lambda path, nb: saved.extend(save_figures(nb, path.stem,
                                                                           figure_dir)))
        results_md = write_results_md(profile, out_dir)
    print(f"results table: {results_md}")
    if saved:
        print(f"figures: {len(saved)} PNG(s) in {figure_dir}/")
        for path in saved:
            print(f"  {path.name}")
    else:
        print("figures: none (the notebooks run drew no PNG)")
    return status


if __name__ == "__main__":
    sys.exit(main())
