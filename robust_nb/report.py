"""Headline numbers: notebooks record them, ``results.md`` tabulates them next to the papers'.

* :func:`record` -- a notebook saves one number under a ``"method/metric"`` key, e.g.
  ``record("pgd/clean", 0.931, n=1000)``; an accuracy measured on n images gets its 95% Wilson
  interval (:mod:`robust_nb.stats`). Records live in ``results.json`` in the profile's results
  folder (:func:`default_results_dir`); the file is rewritten atomically and a key recorded again
  replaces the old record.
* :func:`load`, :func:`clear` -- read the records back; forget those of one notebook (the runner
  does this before it executes the notebook again, so a renamed key leaves no stale row).
* :func:`write_results_md` -- ``results.md``: one row per method, one column per metric, "—" for
  a missing cell, every accuracy with its interval; in the full profile a column with the
  published numbers (:data:`PUBLISHED`), each with its source, and a list of every record.

The notebook's name comes from ``$ROBUST_NB_NOTEBOOK``, which ``python -m robust_nb run`` and
``reproduce`` set for each kernel (a kernel does not know its file); the results folder from
``$ROBUST_NB_RESULTS``, which they set to their output folder.

>>> rec = record("pgd/clean", 0.931, n=1000)                          # doctest: +SKIP
>>> print(rec)                                                        # doctest: +SKIP
pgd/clean = 93.1% (95% CI 91.4–94.5%, n=1000)
>>> write_results_md("quick")                                         # doctest: +SKIP
PosixPath('.../results/quick/results.md')
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .files import atomic_write
from .stats import Accuracy

__all__ = ["record", "load", "clear", "write_results_md", "results_table", "default_results_dir",
           "results_path", "Record", "Published", "PUBLISHED", "ENV_RESULTS",
           "ENV_NOTEBOOK", "RESULTS_FILE", "RESULTS_MD", "METHODS", "METRICS"]

ENV_RESULTS = "ROBUST_NB_RESULTS"
ENV_NOTEBOOK = "ROBUST_NB_NOTEBOOK"
RESULTS_FILE = "results.json"
RESULTS_MD = "results.md"
FORMAT = "robust_nb.results/1"
MISSING = "—"

# Row and column order of the table (and their labels); other methods and metrics follow, sorted.
METHODS = {"classical": "classical", "pgd": "PGD-AT", "fgsm": "FGSM-RS (fast AT)",
           "autoattack": "APGD-AT", "trades": "TRADES", "fire": "FIRE", "mixup": "mixup"}
METRICS = {"clean": "clean", "pgd": "PGD", "autoattack": "AutoAttack", "ece": "ECE",
           "ece_ts": "ECE (TS)", "seconds_per_epoch": "s / epoch"}
_KEY = re.compile(r"^[a-z0-9][a-z0-9_.+-]*/[a-z0-9][a-z0-9_.+-]*$")


# -- where the numbers live --------------------------------------------------------------------

def default_results_dir(profile: str | None = None) -> Path:
    """``$ROBUST_NB_RESULTS``, else ``results/<profile>`` at the repository root (an editable
    install, like :func:`robust_nb.training.cache.default_cache_dir`), else ``results/<profile>``
    under the current folder. ``profile`` None means the current one
    (:func:`robust_nb.config.resolve_profile`)."""
    env = os.environ.get(ENV_RESULTS, "").strip()
    if env:
        return Path(env)
    from .config import resolve_profile

    name = resolve_profile(profile)[0]
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return root / "results" / name
    return Path.cwd() / "results" / name


def results_path(results_dir: str | os.PathLike | None = None) -> Path:
    """The ``results.json`` file in ``results_dir`` (default :func:`default_results_dir`)."""
    folder = Path(results_dir) if results_dir is not None else default_results_dir()
    return folder / RESULTS_FILE


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``.<name>.lock`` next to ``path`` (POSIX) while records are
    read and rewritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the write itself is still atomic
        fcntl = None
    if fcntl is None:
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- one record ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """One recorded number: ``key`` ("method/metric"), ``value``, the optional ``n`` it was
    measured on and interval ``[low, high]`` at ``confidence``, its ``unit`` ("accuracy" and
    "fraction" are fractions shown as percentages, "s" seconds, anything else free text), the
    ``notebook`` that recorded it and when (``recorded``, ISO 8601 UTC)."""

    key: str
    value: float
    n: int | None = None
    low: float | None = None
    high: float | None = None
    confidence: float | None = None
    unit: str | None = None
    notebook: str | None = None
    recorded: str | None = None

    @property
    def method(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def metric(self) -> str:
        return self.key.split("/", 1)[1]

    def value_text(self) -> str:
        """The value alone: "93.1%" (accuracy), "4.60%" (fraction), "12.3 s", "0.25"."""
        if self.unit in ("accuracy", "fraction"):
            return f"{100 * self.value:.{self._digits}f}%"
        return _number(self.value) + (f" {self.unit}" if self.unit else "")

    def interval_text(self) -> str | None:
        """The interval alone, in the value's units: "91.4–94.5", "3.10–6.20"; None if none."""
        if self.low is None:
            return None
        if self.unit in ("accuracy", "fraction"):
            return f"{100 * self.low:.{self._digits}f}–{100 * self.high:.{self._digits}f}"
        return f"{_number(self.low)}–{_number(self.high)}"

    @property
    def _digits(self) -> int:
        return 1 if self.unit == "accuracy" else 2

    def cell(self) -> str:
        """The short text of a table cell: "93.1% (91.4–94.5)", "4.60% (3.10–6.20)", "12.3 s"."""
        interval = self.interval_text()
        return self.value_text() + (f" ({interval})" if interval else "")

    def __str__(self) -> str:
        """"pgd/clean = 93.1% (95% CI 91.4–94.5%, n=1000)", as :mod:`robust_nb.stats` writes."""
        inner = []
        if self.low is not None:
            level = f"{100 * self.confidence:g}% CI " if self.confidence is not None else ""
            percent = "%" if self.unit in ("accuracy", "fraction") else ""
            inner.append(f"{level}{self.interval_text()}{percent}")
        if self.n is not None:
            inner.append(f"n={self.n}")
        return f"{self.key} = {self.value_text()}" + (f" ({', '.join(inner)})" if inner else "")

    def as_dict(self) -> dict:
        return {"value": self.value, "n": self.n,
                "ci": None if self.low is None else [self.low, self.high],
                "confidence": self.confidence, "unit": self.unit, "notebook": self.notebook,
                "recorded": self.recorded}

    @classmethod
    def from_dict(cls, key: str, d: dict) -> Record:
        ci = d.get("ci")
        return cls(key=key, value=float(d["value"]), n=d.get("n"),
                   low=None if ci is None else float(ci[0]),
                   high=None if ci is None else float(ci[1]), confidence=d.get("confidence"),
                   unit=d.get("unit"), notebook=d.get("notebook"), recorded=d.get("recorded"))


def _number(x: float) -> str:
    """Three significant digits, without exponents between 0.01 and a million."""
    if x == 0:
        return "0"
    if abs(x) < 0.01 or abs(x) >= 1e6:
        return f"{x:.3g}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _infer_unit(metric: str, n) -> str | None:
    if metric.startswith(("ece", "l2ce", "calibration")):
        return "fraction"
    if metric.startswith("seconds") or metric.endswith("seconds"):
        return "s"
    return "accuracy" if n is not None else None


def _finite(x, what: str) -> float:
    if isinstance(x, (bool, str, bytes)):
        raise ValueError(f"{what} must be a number, got {x!r}")
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {x}")
    return x


def _make_record(key, value, n, ci, confidence, unit, notebook) -> Record:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"key must be 'method/metric' in lower case (letters, digits, _ . + -), "
                         f"e.g. 'pgd/clean', got {key!r}")
    if isinstance(value, Accuracy):
        if n is not None and n != value.n:
            raise ValueError(f"n={n} contradicts the Accuracy's n={value.n}")
        if ci is None:
            ci, confidence = (value.low, value.high), value.confidence
        n, value = value.n, value.value
        unit = unit or "accuracy"
    value = _finite(value, "value")
    if n is not None:
        if isinstance(n, bool) or int(n) != n or int(n) < 1:
            raise ValueError(f"n must be a positive integer (images measured), got {n!r}")
        n = int(n)
    if unit is None:
        unit = _infer_unit(key.split("/", 1)[1], n)
    if not (unit is None or isinstance(unit, str) and unit.strip()):
        raise ValueError(f"unit must be a non-empty string or None, got {unit!r}")
    if unit in ("accuracy", "fraction") and not 0.0 <= value <= 1.0:
        raise ValueError(f"{key}: a {unit} is a fraction in [0, 1] (0.931, not 93.1), "
                         f"got {value}")
    low = high = None
    if ci is not None:
        try:
            low, high = (_finite(c, "ci") for c in ci)
        except TypeError:
            raise ValueError(f"ci must be a pair (low, high), got {ci!r}") from None
        if low > high:
            raise ValueError(f"ci must be (low, high) with low <= high, got {ci!r}")
        if confidence is not None:
            confidence = _finite(confidence, "confidence")
            if not 0.0 < confidence < 1.0:
                raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    elif confidence is not None:
        raise ValueError("confidence describes a ci; pass ci=(low, high) with it")
    elif unit == "accuracy" and n is not None:
        acc = Accuracy(value, n)  # raises unless value * n is a whole number of images
        value, low, high, confidence = acc.value, acc.low, acc.high, acc.confidence
    if notebook is None:
        notebook = os.environ.get(ENV_NOTEBOOK) or None
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Record(key, value, n, low, high, confidence, unit, notebook, stamp)


# -- the records file ------------------------------------------------------------------------

def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to start afresh") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a robust_nb results file (format {FORMAT!r}); "
                         f"delete or move it")
    return data["records"]


def _write(path: Path, records: dict) -> None:
    text = json.dumps({"format": FORMAT, "records": dict(sorted(records.items()))}, indent=1,
                      ensure_ascii=False)
    atomic_write(path, text + "\n")


def record(key: str, value, *, n: int | None = None, ci: tuple[float, float] | None = None,
           unit: str | None = None, notebook: str | None = None,
           confidence: float | None = None, results_dir: str | os.PathLike | None = None
           ) -> Record:
    """Save a headline number under ``key`` = "method/metric"; a repeated key replaces the old.

    Args:
        key: "method/metric" in lower case, e.g. "pgd/clean", "trades/autoattack",
            "classical/ece", "fgsm/seconds_per_epoch" (methods: classical, pgd, fgsm,
            autoattack, trades, fire, mixup; metrics: clean, pgd, autoattack, ece, ece_ts,
            seconds_per_epoch, ...; others are allowed and get their own row or column).
        value: the number (a float, a 0-d tensor) or a :class:`robust_nb.stats.Accuracy`
            (which brings its n and interval).
        n: the number of images it was measured on. With the unit "accuracy" and no ``ci``,
            ``value * n`` must be a whole count and the 95% Wilson interval is stored.
        ci: an interval ``(low, high)`` computed elsewhere (e.g. a bootstrap of the ECE,
            :func:`robust_nb.calibration.bootstrap_interval`); ``confidence`` is its level.
        unit: "accuracy" (a fraction, shown as %), "fraction" (e.g. a calibration error,
            shown as %), "s", or any label. Default: "fraction" for metrics starting with
            "ece", "l2ce" or "calibration", "s" for "seconds...", else "accuracy" when ``n``
            is given, else none.
        notebook: the notebook recording it (default ``$ROBUST_NB_NOTEBOOK``, set by the runner).
        results_dir: the folder of ``results.json`` (default :func:`default_results_dir`).

    Returns:
        The stored :class:`Record` (``print`` it to show the number with its interval).

    Raises:
        ValueError: a malformed key, a value that is not finite, an accuracy outside [0, 1] or
            not a count out of ``n``, a bad ``n``, ``ci`` or ``confidence``.

    >>> rec = record("pgd/clean", 0.931, n=1000, results_dir=tmp)       # doctest: +SKIP
    >>> (round(rec.low, 4), round(rec.high, 4))                           # doctest: +SKIP
    (0.9136, 0.9451)
    """
    rec = _make_record(key, value, n, ci, confidence, unit, notebook)
    path = results_path(results_dir)
    with _locked(path):
        records = _read(path)
        records[rec.key] = rec.as_dict()
        _write(path, records)
    return rec


def load(results_dir: str | os.PathLike | None = None) -> dict[str, Record]:
    """Every record in ``results_dir`` (default :func:`default_results_dir`), by key; ``{}``
    when nothing was recorded yet. A file that is not ours raises ``ValueError``."""
    return {k: Record.from_dict(k, d) for k, d in _read(results_path(results_dir)).items()}


def clear(notebook: str | None = None, results_dir: str | os.PathLike | None = None) -> int:
    """Forget the records of ``notebook`` (all records when None); return how many went."""
    path = results_path(results_dir)
    with _locked(path):
        records = _read(path)
        keep = {} if notebook is None else {k: d for k, d in records.items()
                                            if d.get("notebook") != notebook}
        if len(keep) != len(records):
            _write(path, keep)
    return len(records) - len(keep)


# -- published numbers -----------------------------------------------------------------------

@dataclass(frozen=True)
class Published:
    """A number a paper (or RobustBench, for the paper's released model) reports on CIFAR-10.

    ``metrics`` pairs a metric of ours with a fraction: "clean", "pgd", "autoattack", "ece",
    "ece_ts", or "reported" (the robust accuracy the paper states under its own attack).
    ``verified_in`` says which stored text the numbers were checked against.
    """

    method: str
    model: str
    metrics: tuple[tuple[str, float], ...]
    citation: str
    link: str
    verified_in: str
    note: str = ""


_RB = "RobustBench model_info/cifar10/Linf/{}.json (commit 2b95e7e)"

PUBLISHED: tuple[Published, ...] = (
    Published("classical", "WRN-28-10", (("clean", 0.9478), ("autoattack", 0.0)),
              "RobustBench's standardly trained model (Croce et al. 2021, RobustBench)",
              "https://github.com/RobustBench/robustbench", _RB.format("Standard")),
    Published("classical", "ResNet-110", (("ece", 0.046), ("ece_ts", 0.0083)),
              "Guo, Pleiss, Sun, Weinberger, On Calibration of Modern Neural Networks, ICML "
              "2017, Table 1 (CIFAR-10, ECE with 15 bins, before / after temperature scaling)",
              "https://arxiv.org/abs/1706.04599", "the paper's text, Table 1"),
    Published("pgd", "WRN-34-10", (("clean", 0.8714), ("reported", 0.4704),
                                   ("autoattack", 0.4404)),
              "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, "
              "ICLR 2018; AutoAttack by RobustBench", "https://arxiv.org/abs/1706.06083",
              _RB.format("Madry2018Towards")),
    Published("pgd", "WRN-34-20", (("clean", 0.8534), ("reported", 0.58),
                                   ("autoattack", 0.5342)),
              "Rice, Wong, Kolter, Overfitting in adversarially robust deep learning, ICML "
              "2020 (the authors' best, early-stopped checkpoint); AutoAttack by RobustBench",
              "https://arxiv.org/abs/2002.11569",
              _RB.format("Rice2020Overfitting") + "; locuslab/robust_overfitting README"),
    Published("fgsm", "PreAct ResNet-18", (("clean", 0.8606), ("reported", 0.4606)),
              "Wong, Rice, Kolter, Fast is better than free: Revisiting adversarial training, "
              "ICLR 2020 (FGSM with random init, 12 minutes)",
              "https://arxiv.org/abs/2001.03994",
              "locuslab/fast_adversarial README (CIFAR10 Acc / Adv Acc at eps 8/255)",
              note="architecture as RobustBench lists the released model"),
    Published("fgsm", "PreAct ResNet-18", (("clean", 0.8334), ("autoattack", 0.4321)),
              "Wong et al. 2020's released model, evaluated by RobustBench",
              "https://arxiv.org/abs/2001.03994", _RB.format("Wong2020Fast")),
    Published("trades", "WRN-34-10", (("clean", 0.8492), ("reported", 0.5643),
                                      ("autoattack", 0.5308)),
              "Zhang et al., Theoretically Principled Trade-off between Robustness and "
              "Accuracy, ICML 2019; AutoAttack by RobustBench",
              "https://arxiv.org/abs/1901.08573", _RB.format("Zhang2019Theoretically"),
              note="eps = 0.031 (about 7.9/255), not 8/255"),
)

_PUBLISHED_LABELS = {"clean": "clean", "pgd": "PGD", "autoattack": "AA", "ece": "ECE",
                     "ece_ts": "ECE after TS", "reported": "paper's attack"}


# -- results.md ------------------------------------------------------------------------------

def _ordered(names, known: dict) -> list[str]:
    names = set(names)
    return [m for m in known if m in names] + sorted(names - set(known))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def results_table(records: dict[str, Record], published: tuple[Published, ...] = ()) -> str:
    """The Markdown table of ``records``: a row per method, a column per metric, "—" where
    nothing was recorded; with ``published``, a row for each of their methods too and a last
    column citing them as [1], [2], ... (their order in ``published``)."""
    methods = _ordered({r.method for r in records.values()} | {p.method for p in published},
                       METHODS)
    metrics = _ordered({r.metric for r in records.values()}, METRICS)
    refs = {p: i + 1 for i, p in enumerate(published)}
    header = ["method"] + [METRICS.get(m, m) for m in metrics]
    if published:
        header.append("published (CIFAR-10)")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["--:"] * len(metrics) + (["---"] if published else []))
             + "|"]
    by_key = {(r.method, r.metric): r for r in records.values()}
    for method in methods:
        row = [METHODS.get(method, method)]
        row += [by_key[method, m].cell() if (method, m) in by_key else MISSING for m in metrics]
        if published:
            cites = [_published_text(p) + f" [{refs[p]}]" for p in published if p.method == method]
            row.append("; ".join(cites) if cites else MISSING)
        lines.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    return "\n".join(lines)


def _published_text(p: Published) -> str:
    values = ", ".join(f"{_PUBLISHED_LABELS.get(m, m)} {100 * v:.2f}%" for m, v in p.metrics)
    return f"{p.model}: {values}"


def write_results_md(profile: str | None = None, results_dir: str | os.PathLike | None = None,
                     *, published: bool | None = None, title: str | None = None) -> Path:
    """Write ``results.md`` next to ``results.json`` and return its path.

    Args:
        profile: the profile whose results these are (None: the current one); it picks the
            default folder ``results/<profile>`` and whether published numbers are shown.
        results_dir: the folder (default :func:`default_results_dir` of ``profile``).
        published: add the published-numbers column and their sources (default: only for
            the full profile; the quick profile trains on MNIST, where they do not apply).
        title: the first heading (default "Results (<profile> profile)").

    >>> write_results_md("full", results_dir="results/full")                  # doctest: +SKIP
    PosixPath('results/full/results.md')
    """
    from .config import resolve_profile

    profile = resolve_profile(profile)[0]
    folder = Path(results_dir) if results_dir is not None else default_results_dir(profile)
    records = load(folder)
    show = profile == "full" if published is None else bool(published)
    chosen = PUBLISHED if show else ()
    parts = [f"# {title or f'Results ({profile} profile)'}", ""]
    if records:
        parts += ["Headline numbers recorded by the notebooks (`rnb.report.record`). Accuracies "
                  "carry their 95% Wilson score interval in parentheses; other intervals are "
                  "those the notebook recorded (level and n in the list below).", ""]
    else:
        parts += ["No headline numbers were recorded yet: run the notebooks "
                  "(`python -m robust_nb reproduce`).", ""]
    if records or chosen:
        parts += [results_table(records, chosen), ""]
    if chosen:
        parts += ["## Published numbers", "",
                  "CIFAR-10, L-inf eps 8/255 unless noted. \"paper's attack\" is the robust "
                  "accuracy the paper reports under its own attack; AA is AutoAttack.", ""]
        for i, p in enumerate(chosen, 1):
            note = f" ({p.note})" if p.note else ""
            parts.append(f"{i}. {_published_text(p)}{note}. {p.citation}, <{p.link}>. "
                         f"Checked against: {p.verified_in}.")
        parts.append("")
    if records:
        parts += ["## Every record", "", "| key | value | interval | n | notebook | recorded |",
                  "|---|--:|---|--:|---|---|"]
        for key in sorted(records):
            r = records[key]
            interval = r.interval_text() or MISSING
            if r.low is not None and r.confidence is not None:
                interval += f" ({100 * r.confidence:g}%)"
            value = r.value_text()
            row = [key, value, interval, MISSING if r.n is None else str(r.n),
                   r.notebook or MISSING, r.recorded or MISSING]
            parts.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
        parts.append("")
    return atomic_write(folder / RESULTS_MD, "\n".join(parts))
