"""Smoke runs: every full-profile notebook, on the full-profile code paths, for a handful of steps.

``python -m robust_nb run --smoke`` (or any process with ``ROBUST_NB_SMOKE=1`` and the full
profile) runs the GPU course on a 2-core CPU in minutes, so that CI proves it does not crash on
shapes, channels, flips, model names or recipes. Everything is the full profile's -- CIFAR-10
through torchvision, PreAct-ResNet-18 and WRN-34-10 at full width, every full recipe -- except
the sizes, which are shrunk here and only here:

* :func:`write_fake_cifar10` writes a tiny CIFAR-10 in torchvision's exact on-disk format;
* :func:`shrink_config` (applied by ``rnb.setup()``) shrinks the evaluation sizes of a Config;
* :func:`shrink_options` / :func:`shrink_recipe` (applied by ``rnb.training.recipe()`` and
  ``rnb.training.train_method()``) shrink the training sizes of a recipe: :data:`EPOCHS` epochs
  of one or two batches of :data:`BATCH_SIZE` images, one attack step, a small held-out split.

How the fake copy loads (:func:`cifar10_class`). torchvision's ``CIFAR10`` verifies the md5 sum
of every file against the real dataset's, which a fake copy cannot match. Rather than skip that
check, or read the pickles with our own code (which would not test torchvision's loader), the
fake copy carries a manifest, :data:`MANIFEST`, with the md5 sums of its own files. In smoke mode
``rnb.data.load_dataset("cifar10")`` loads a folder that has this manifest with a subclass of
torchvision's ``CIFAR10`` whose expected sums are the manifest's: torchvision's own code reads the
pickles, checks every file's integrity and loads the class names, and a fake file that was
changed or cut short fails that check, with an error that says how to write it again (a fake copy
is never downloaded). Everything else is unchanged: outside smoke mode, and in smoke mode for a
folder without the manifest (a real copy), the real md5 sums are checked as always, so a fake copy
can never pass for CIFAR-10.

Notebook ``assert``s check what training teaches (robust accuracy above classical, calibration
improving...), which two epochs on ten random-looking images cannot show: in a smoke run an
``AssertionError`` raised by a notebook's own check is expected and counted; every other
exception, and an ``AssertionError`` raised inside the package, is a bug and fails the run
(:func:`run_smoke`, :attr:`CellError.expected`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pickle
import re
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENV_SMOKE = "ROBUST_NB_SMOKE"
BASE_FOLDER = "cifar-10-batches-py"                 # torchvision.datasets.CIFAR10.base_folder
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
MANIFEST = "ROBUST_NB_FAKE.json"                    # marks a fake copy; holds its md5 sums
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")

# -- the sizes of a smoke run (everything else is the full profile's) -------------------------
N_TRAIN = 10               # fake CIFAR-10 training images (1 per class)
N_TEST = 10                # fake CIFAR-10 test images (1 per class)
EPOCHS = 2                 # epochs of every training: the epoch-to-epoch paths run (schedules,
                           # best-epoch selection, the FGSM guard's drop check, DropBlock ramp)
BATCH_SIZE = 8             # training batch: 2 steps per epoch on 10 images, 1 on 10 - HOLDOUT
HOLDOUT = 2                # training images held out by recipes that hold out some (full: 1,000)
ROBUST_VAL = 2             # images attacked for val_robust_acc after each epoch (full: 1,000)
ATTACK_STEPS = 1           # attack steps inside training (PGD, TRADES/FIRE ascent, APGD, guard)
CONFIG_SIZES = dict(
    n_attack=4,            # test images attacked in the notebooks (full: 10,000)
    n_autoattack=2,        # test images attacked by AutoAttack (full: 10,000)
    attack_steps=2,        # PGD/APGD iterations at evaluation time (full: 20)
    restarts=1,
    apgd_steps=2,          # APGD/FAB iterations inside AutoAttack (full: 100)
    square_queries=10,     # Square Attack queries inside AutoAttack (full: 5,000)
    trades_sweep_epochs=EPOCHS,  # notebook 06's beta sweep: as long as the recipe (full: 76)
)


def enabled() -> bool:
    """Whether this process is a smoke run: ``$ROBUST_NB_SMOKE`` is "1" ("" or "0": no)."""
    value = os.environ.get(ENV_SMOKE, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"${ENV_SMOKE} must be 1 (a smoke run) or 0/unset, got {value!r}")
    return value == "1"


# -- shrinking: the one place that decides the sizes of a smoke run ---------------------------

def shrink_config(cfg):
    """``cfg`` with the evaluation sizes of a smoke run (:data:`CONFIG_SIZES`, each only ever
    lowered) and the TRADES beta sweep cut to two betas: its smallest (0 in the full profile, the
    sweep's cheap special case) and the TRADES recipe's own beta when the sweep has it (else the
    largest), whose model notebook 06 has trained already, so the sweep loads it from the cache,
    as in a real run. Everything else -- dataset, models, width, eps, step sizes -- stays."""
    from .training.recipes import recipe

    sizes = {name: min(getattr(cfg, name), value) for name, value in CONFIG_SIZES.items()}
    betas = tuple(cfg.trades_betas)
    if len(betas) > 2:
        own = recipe(cfg, "trades").options.beta
        betas = (min(betas), own if own in betas and own != min(betas) else max(betas))
    return dataclasses.replace(cfg, trades_betas=betas, **sizes)


def shrink_options(options):
    """Training options for a smoke run: :data:`EPOCHS` epochs of :data:`BATCH_SIZE`-image
    batches (milestones dropped, so a piecewise schedule decays at its default 50% and 75% of
    training; no warm-up), :data:`ATTACK_STEPS` attack step(s), and at most :data:`ROBUST_VAL`
    images for the per-epoch robust validation. Sizes are only lowered (a second call changes
    nothing); every other option (lr, schedule, eps, beta, bn_mode, select_best, augmentation,
    amp, ...) stays the recipe's."""
    changes = dict(epochs=min(options.epochs, EPOCHS),
                   batch_size=min(options.batch_size, BATCH_SIZE), milestones=(),
                   warmup_epochs=0)
    names = set(options.names())
    for name in ("steps", "robust_val_steps", "guard_steps"):
        if name in names:
            changes[name] = min(getattr(options, name), ATTACK_STEPS)
    if "restarts" in names:
        changes["restarts"] = 1
    if "robust_val" in names:
        changes["robust_val"] = min(options.robust_val, ROBUST_VAL)
    return options.replace(**changes)


def shrink_holdout(holdout: int) -> int:
    """At most :data:`HOLDOUT` held-out training images (0 stays 0)."""
    return min(holdout, HOLDOUT)


def shrink_recipe(recipe):
    """``recipe`` with :func:`shrink_options` and :func:`shrink_holdout` applied."""
    return dataclasses.replace(recipe, options=shrink_options(recipe.options),
                               holdout=shrink_holdout(recipe.holdout))


# -- a fake CIFAR-10 in torchvision's on-disk format -------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """The pure-Python pickler, writing every ``bytes`` object as a Python 2 ``str`` (opcodes
    SHORT_BINSTRING / BINSTRING), as in the real CIFAR-10 files, which Python 2 wrote:
    ``pickle.load(f, encoding="bytes")`` reads the keys as ``b"data"``, ``b"labels"`` (as on the
    dataset's web page), ``encoding="latin1"`` (torchvision) as ``"data"``, ``"labels"``; a
    NumPy array's raw data is such a string too, which NumPy reads back either way."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", len(obj)) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2str


def _py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _fake_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3072) rows in CIFAR-10's layout (1024 red, 1024 green, then 1024 blue values,
    each a 32 x 32 image row by row): a colour per class, a left-to-right ramp whose direction
    depends on the class (so a horizontal flip changes the image), and noise."""
    palette = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                        [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                        [210, 245, 60], [250, 190, 190]], dtype=np.float32)      # (10, 3)
    ramp = np.linspace(-60, 60, 32, dtype=np.float32)                           # (32,) columns
    direction = np.where(labels % 2 == 0, 1.0, -1.0).astype(np.float32)          # (N,)
    images = (palette[labels][:, :, None, None]                                  # (N, 3, 1, 1)
              + direction[:, None, None, None] * ramp[None, None, None, :]       # (N, 1, 1, 32)
              + rng.normal(0, 25, size=(len(labels), 3, 32, 32)))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % len(LABEL_NAMES)).astype(np.int64)


def write_fake_cifar10(root: str | os.PathLike, n_train: int = N_TRAIN, n_test: int = N_TEST,
                       seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 into ``root/cifar-10-batches-py/``; return ``root``.

    The files are those of the real dataset, in its format: ``data_batch_1`` .. ``data_batch_5``
    (``n_train`` images split as evenly as possible) and ``test_batch`` (``n_test`` images), each
    a Python 2 pickle of a dict with ``b"batch_label"``, ``b"labels"`` (a list of ints),
    ``b"data"`` (uint8, shape (N, 3072), channel-major rows) and ``b"filenames"``, and
    ``batches.meta`` with ``b"label_names"``, ``b"num_cases_per_batch"`` and ``b"num_vis"``.
    Labels are balanced over the 10 classes (each split has every class: ``n_train`` and
    ``n_test`` must be at least 10) and shuffled; images are structured noise
    (:func:`_fake_images`). Everything depends only on ``seed``. :data:`MANIFEST` records the
    md5 sum of every file (see the module docstring for how the copy loads).

    Refuses to write into a ``cifar-10-batches-py`` folder that is not a fake copy (a real one).

    >>> root = write_fake_cifar10(tmp_path)                 # then, with ROBUST_NB_SMOKE=1:
    >>> rnb.data.load_dataset("cifar10", root=root)          # doctest: +SKIP
    Dataset('cifar10', train=(10, 3, 32, 32), test=(10, 3, 32, 32), classes=10)
    """
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < len(LABEL_NAMES):
            raise ValueError(f"{name} must be an integer >= {len(LABEL_NAMES)} (every class in "
                             f"every split), got {n!r}")
    root = Path(root)
    folder = root / BASE_FOLDER
    if folder.exists() and any(folder.iterdir()) and not (folder / MANIFEST).is_file():
        raise FileExistsError(f"{folder} holds files but no {MANIFEST}: it looks like a real "
                              f"CIFAR-10 copy; write the fake copy into another folder")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)        # no manifest while files are rewritten
    rng = np.random.default_rng(seed)

    def batch(label: str, labels: np.ndarray, first: int) -> dict:
        return {b"batch_label": label.encode(),
                b"labels": [int(c) for c in labels],
                b"data": _fake_images(labels, rng),
                b"filenames": [f"fake_{first + i:06d}.png".encode() for i in range(len(labels))]}

    files = {}
    train_labels = _balanced_labels(n_train, rng)
    start = 0
    for i, (name, part) in enumerate(zip(TRAIN_FILES, np.array_split(train_labels, 5), strict=True)):
        files[name] = batch(f"training batch {i + 1} of 5", part, start)
        start += len(part)
    files[TEST_FILE] = batch("testing batch 1 of 1", _balanced_labels(n_test, rng), 0)
    files[META_FILE] = {b"num_cases_per_batch": -(-n_train // 5),
                        b"label_names": [c.encode() for c in LABEL_NAMES],
                        b"num_vis": 3072}
    md5 = {}
    for name, content in files.items():
        payload = _py2_pickle(content)
        (folder / name).write_bytes(payload)
        md5[name] = hashlib.md5(payload).hexdigest()
    manifest = {"note": "a FAKE CIFAR-10 written by robust_nb.smoke.write_fake_cifar10 for "
                        "smoke runs; not the real dataset",
                "n_train": n_train, "n_test": n_test, "seed": seed, "md5": md5}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return root


def cifar10_class(root: str | os.PathLike) -> type:
    """The dataset class that loads CIFAR-10 from ``root`` in a smoke run: torchvision's
    ``CIFAR10`` itself when ``root`` holds no fake copy, else a subclass that checks the fake
    copy's files against the md5 sums of its :data:`MANIFEST` and never downloads."""
    import torchvision.datasets as tvd

    folder = Path(root) / BASE_FOLDER
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return tvd.CIFAR10
    try:
        md5 = json.loads(manifest.read_text())["md5"]
        train_list = [[name, md5[name]] for name, _ in tvd.CIFAR10.train_list]
        test_list = [[name, md5[name]] for name, _ in tvd.CIFAR10.test_list]
        meta = {**tvd.CIFAR10.meta, "md5": md5[tvd.CIFAR10.meta["filename"]]}
    except (ValueError, KeyError, TypeError) as err:
        raise RuntimeError(f"{manifest} is not a fake CIFAR-10 manifest ({err!r}); write the "
                           f"copy again with robust_nb.smoke.write_fake_cifar10({str(root)!r})"
                           ) from err

    class FakeCIFAR10(tvd.CIFAR10):
        """torchvision's CIFAR10, checking the files against a fake copy's own md5 sums."""

        def download(self) -> None:
            if not self._check_integrity():
                raise RuntimeError(
                    f"the fake CIFAR-10 in {folder} is incomplete or was changed: its files do "
                    f"not match the md5 sums in {MANIFEST}. A fake copy is never downloaded; "
                    f"write it again with robust_nb.smoke.write_fake_cifar10({str(root)!r})")

    FakeCIFAR10.train_list, FakeCIFAR10.test_list, FakeCIFAR10.meta = train_list, test_list, meta
    return FakeCIFAR10


# -- the smoke run of the notebooks ------------------------------------------------------------

def default_smoke_dir() -> Path:
    """``results/smoke`` at the repository root (an editable install), else under the current
    folder. Never ``$ROBUST_NB_RESULTS``: a smoke run's numbers must not mix with real ones."""
    root = Path(__file__).resolve().parents[1]
    base = root if (root / "pyproject.toml").is_file() else Path.cwd()
    return base / "results" / "smoke"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclasses.dataclass
class CellError:
    """An error output of an executed notebook's cell (``cell``: its index in ``nb.cells``)."""

    notebook: str
    cell: int
    ename: str
    evalue: str
    source: str
    traceback: str

    @property
    def expected(self) -> bool:
        """A failed check of the notebook: expected in a smoke run (see the module docstring).

        That is an ``AssertionError`` raised by the notebook's own ``assert`` (or a testing
        helper it calls, e.g. ``torch.testing.assert_close``), not one raised in the package's
        own code: an ``assert`` inside ``robust_nb`` failing is a bug."""
        return self.ename == "AssertionError" and not _raised_in_package(self.traceback)

    def __str__(self) -> str:
        first = self.source.strip().splitlines()[0] if self.source.strip() else ""
        return (f"{self.notebook}, cell {self.cell} ({first[:70]!r}): "
                f"{self.ename}: {self.evalue[:500]}")


def _raised_in_package(traceback: str) -> bool:
    """Whether an IPython traceback (ANSI codes removed) was raised in the robust_nb package: its
    innermost frame that is either notebook code (``Cell In[3], line 2``; older IPythons:
    ``Input In [3]``, ``<ipython-input-3-...>``) or package code (``File <path>:<line>, in f``,
    the path absolute or home-relative) is package code. Frames of other libraries (a testing
    helper the cell called, torch inside the package) do not decide."""
    package = Path(__file__).resolve().parent
    forms = {str(package)}
    with contextlib.suppress(ValueError, RuntimeError):        # not under $HOME / no $HOME
        forms.add(str(Path("~") / package.relative_to(Path.home())))
    where = None
    for line in traceback.splitlines():
        line = line.strip()
        if line.startswith(("Cell In[", "Input In [")) or "<ipython-input-" in line:
            where = "notebook"
        elif line.startswith("File ") and any(f"{form}{os.sep}" in line for form in forms):
            where = "package"
    return where == "package"


def cell_errors(nb, notebook: str) -> list[CellError]:
    """Every error output of the executed notebook ``nb``, in cell order."""
    errors = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                tb = _ANSI.sub("", "\n".join(output.get("traceback", [])))
                errors.append(CellError(notebook, index, output.get("ename", "?"),
                                        output.get("evalue", ""), "".join(cell.source), tb))
    return errors


def run_smoke(paths: list[Path], out_dir: Path, timeout: int = 1800,
              data_root: str | os.PathLike | None = None) -> int:
    """Smoke-run the notebooks ``paths`` in the full profile; return 0, or 1 on any error that is
    not a notebook's failed check (:attr:`CellError.expected`).

    Each kernel gets ``$ROBUST_NB_PROFILE=full``, ``$ROBUST_NB_SMOKE=1``, ``$ROBUST_NB_DATA`` (a
    fake CIFAR-10 written into a temporary folder by :func:`write_fake_cifar10`, unless
    ``data_root`` is given) and ``$ROBUST_NB_CACHE`` (a fresh temporary folder shared by the
    notebooks of this run, so every model is trained here, on the code paths under test, and the
    real cache is never touched). Every notebook runs to its end (nbclient with
    ``allow_errors``); executed copies go to ``out_dir``. The summary counts the failed assert
    cells of each notebook (expected); every other error is printed on stderr with its
    notebook, cell and traceback, and makes the run fail. A notebook that times out or whose
    kernel dies fails the run too.
    """
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    from .__main__ import _environment, execute_notebook

    out_dir = Path(out_dir).resolve()
    failures: list[str] = []
    asserts: dict[str, int] = {}
    total = 0.0
    with tempfile.TemporaryDirectory(prefix="robust_nb_smoke_") as tmp:
        data = Path(data_root).resolve() if data_root is not None else \
            write_fake_cifar10(Path(tmp) / "data")
        cache = Path(tmp) / "cache"
        print(f"smoke run: full profile, tiny sizes (robust_nb.smoke), CIFAR-10 from {data}, "
              f"models cached in {cache} for this run only")
        env = {"ROBUST_NB_PROFILE": "full", ENV_SMOKE: "1", "ROBUST_NB_DATA": str(data),
               "ROBUST_NB_CACHE": str(cache)}
        with _environment(**env):
            for path in paths:
                start = time.perf_counter()
                try:
                    nb, seconds = execute_notebook(path, out_dir, timeout, allow_errors=True)
                except (CellTimeoutError, DeadKernelError) as err:
                    seconds = time.perf_counter() - start
                    failures.append(f"{path.stem}: {type(err).__name__}: {err}")
                    print(f"  {path.name}: {seconds:.0f} s, {type(err).__name__}")
                    total += seconds
                    continue
                total += seconds
                errors = cell_errors(nb, path.stem)
                bugs = [e for e in errors if not e.expected]
                asserts[path.stem] = sum(e.expected for e in errors)
                print(f"  {path.name}: {seconds:.0f} s, {asserts[path.stem]} assert cell(s) "
                      f"failed (expected), {len(bugs)} other error(s)")
                failures += [f"{e}\n{_tail(e.traceback)}" for e in bugs]
    counts = ", ".join(f"{name.split('_')[0]}: {n}" for name, n in asserts.items())
    print(f"smoke: {len(paths)} notebook(s) in {total:.0f} s; failed assert cells (expected in "
          f"a smoke run) {counts or 'none'}; other errors: {len(failures)}; executed copies in "
          f"{out_dir}/")
    if failures:
        print("\nsmoke run FAILED: errors other than a notebook's failed asserts (bugs on the "
              "full-profile code paths):", file=sys.stderr)
        for failure in failures:
            print(f"\n{failure}", file=sys.stderr)
        return 1
    return 0


def _tail(traceback: str, lines: int = 12) -> str:
    return "\n".join("    " + line for line in traceback.strip().splitlines()[-lines:])
