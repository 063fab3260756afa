"""Progress bars that survive headless runs.

In a live notebook ``tqdm.auto`` draws an ipywidgets bar. A notebook executed without a
front-end (``python -m robust_nb run``, nbclient, nbval) stores no widget state, so its saved copy
shows every such bar as an empty "0%". :func:`progress` is ``tqdm.auto.tqdm`` unless
``$ROBUST_NB_TEXT_PROGRESS`` is 1, and then the plain text ``tqdm`` (written to stderr, so it is
kept in the cell's outputs), updated at most every few seconds so that the saved copy stays small,
and without the inner bars that vanish when done (``leave=False``), which a saved copy cannot erase.
The command-line runner and the test suite set the variable for the kernels they start.

:func:`notify` tells a learner about something the course handled for them (the FGSM guard
rolling back a catastrophic overfit): a ``RuntimeWarning`` in scripts and tests, a short
highlighted note in a notebook instead of a pink stderr block with a temporary file's path.

>>> for _ in progress(range(3), desc="demo", disable=True):
...     pass
"""

from __future__ import annotations

import os

__all__ = ["ENV_TEXT_PROGRESS", "text_progress", "progress", "notify", "in_notebook"]

ENV_TEXT_PROGRESS = "ROBUST_NB_TEXT_PROGRESS"
TEXT_MININTERVAL = 5.0       # seconds between two updates of a text bar (unless given)


def text_progress() -> bool:
    """True when ``$ROBUST_NB_TEXT_PROGRESS`` asks for text bars (1); False when unset or 0."""
    value = os.environ.get(ENV_TEXT_PROGRESS, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"${ENV_TEXT_PROGRESS} must be 1 (text progress bars) or 0/unset "
                         f"(widgets where a front-end can draw them), got {value!r}")
    return value == "1"


def progress(*args, **kwargs):
    """A ``tqdm`` progress bar (same arguments): a widget in a live notebook, text when
    :func:`text_progress` is True."""
    if text_progress():
        from tqdm.std import tqdm

        kwargs.setdefault("mininterval", TEXT_MININTERVAL)
        if kwargs.get("leave") is False:
            # An inner bar that does not stay (the batches of one epoch) redraws above the outer
            # one with cursor-up escapes, which a saved notebook shows as "[A" clutter and stale
            # half-way lines; in text the outer bar's postfix already says how training goes.
            kwargs["disable"] = True
    else:
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where ``display`` reaches a notebook), else False."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def notify(message: str, category: type[Warning] = RuntimeWarning, stacklevel: int = 2) -> None:
    """Tell the learner ``message``: in a notebook kernel as a highlighted note (HTML, with the
    plain text as fallback, so saved and headless copies read the same), elsewhere as a warning
    of ``category`` (``stacklevel`` as for :func:`warnings.warn`, counted from the caller)."""
    if not in_notebook():
        import warnings

        warnings.warn(message, category, stacklevel=stacklevel + 1)
        return
    import html

    from IPython.display import display

    class _Note:                                  # text/plain and text/html of the same note
        def __repr__(self):
            return f"Note ({category.__name__}): {message}"

        def _repr_html_(self):
            return ('<div style="border-left: 4px solid #e0a800; background: #fff8e1; '
                    f'padding: 6px 10px; margin: 4px 0"><b>Note</b> ({category.__name__}): '
                    f"{html.escape(message)}</div>")

    display(_Note())
