"""Command line: ``python -m robust_nb run [NOTEBOOK ...]`` executes the course headlessly.

The notebooks run in order, in the current profile (``--profile`` or ``$ROBUST_NB_PROFILE``, else
auto), and the executed copies, with their outputs, are written to ``results/<profile>/``. The run
stops at the first failing cell and prints that cell's error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


class NotebookFailed(RuntimeError):
    """A cell of a notebook raised."""


def find_notebooks(names: list[str], notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Resolve names ("04", "04_attacks", "notebooks/04_attacks.ipynb") to notebook paths, in order."""
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


def run_notebook(path: Path, out_dir: Path, timeout: int = 1800) -> float:
    """Execute one notebook with nbclient (cwd = its folder); write the executed copy; return seconds."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from tqdm.auto import tqdm

    nb = nbformat.read(path, as_version=4)
    n_code = sum(cell.cell_type == "code" for cell in nb.cells)
    bar = tqdm(total=n_code, desc=path.stem, unit="cell", leave=True)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            on_cell_executed=lambda **_: bar.update(1))
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        client.execute()
    except CellExecutionError as err:
        raise NotebookFailed(f"{path.name} failed:\n{err}") from None
    finally:
        bar.close()
        nbformat.write(nb, out_dir / path.name)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robust_nb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks in order and save the executed copies")
    run.add_argument("notebooks", nargs="*", type=str,
                     help="notebook names or numbers (default: all, in order)")
    run.add_argument("--profile", choices=("quick", "full"), default=None,
                     help="profile for every notebook (default: $ROBUST_NB_PROFILE, else auto)")
    run.add_argument("--out", type=Path, default=None,
                     help="folder for the executed notebooks (default: results/<profile>)")
    run.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    from .config import resolve_profile

    profile, why = resolve_profile(args.profile)
    os.environ["ROBUST_NB_PROFILE"] = profile  # the kernels inherit it
    out_dir = args.out or Path("results") / profile
    try:
        paths = find_notebooks(args.notebooks)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"running {len(paths)} notebook(s) in the {profile} profile ({why}); "
          f"executed copies go to {out_dir}/")
    total = 0.0
    for path in paths:
        try:
            seconds = run_notebook(path, out_dir, args.timeout)
        except NotebookFailed as err:
            print(f"\n{err}\nThe executed copy up to the failure is in {out_dir / path.name}",
                  file=sys.stderr)
            return 1
        total += seconds
        print(f"  {path.name}: {seconds:.0f} s")
    print(f"done: {len(paths)} notebook(s) in {total:.0f} s; executed copies in {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
