"""Progress bars: widgets in a live notebook, text where no front-end stores widget state."""

import io

import nbformat
import pytest
import tqdm.auto
import tqdm.std
from nbformat.v4 import new_code_cell, new_notebook

from robust_nb.__main__ import execute_notebook
from robust_nb.progress import ENV_TEXT_PROGRESS, TEXT_MININTERVAL, progress, text_progress


def test_the_variable_picks_text_bars(monkeypatch):
    monkeypatch.setenv(ENV_TEXT_PROGRESS, "1")
    assert text_progress()
    bar = progress(total=3, file=io.StringIO())
    assert type(bar) is tqdm.std.tqdm and bar.mininterval == TEXT_MININTERVAL
    assert progress(total=3, file=io.StringIO(), mininterval=0.5).mininterval == 0.5
    assert progress(total=3, file=io.StringIO(), leave=False).disable      # inner bars: none in text
    assert not progress(total=3, file=io.StringIO(), leave=True).disable
    monkeypatch.setenv(ENV_TEXT_PROGRESS, "0")
    assert not text_progress()
    assert type(progress(total=3, disable=True)) is tqdm.auto.tqdm     # widgets where possible
    monkeypatch.delenv(ENV_TEXT_PROGRESS)
    assert not text_progress()
    monkeypatch.setenv(ENV_TEXT_PROGRESS, "yes")
    with pytest.raises(ValueError, match=ENV_TEXT_PROGRESS):
        progress(total=3)


def test_the_runner_gives_its_kernels_text_bars(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_TEXT_PROGRESS, raising=False)     # only the runner may set it
    source = ("from robust_nb.progress import progress\n"
              "bar = progress(range(3), desc='work')\n"
              "print(type(bar).__module__)\n"
              "for _ in bar:\n"
              "    pass")
    path = tmp_path / "99_bars.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(source)]), path)
    executed, _ = execute_notebook(path, tmp_path / "out")
    outputs = executed.cells[0].outputs
    assert all(o.output_type == "stream" for o in outputs)    # no widget (display_data) output
    text = "".join(o.text for o in outputs)
    assert "tqdm.std" in text and "work: 100%" in text and "3/3" in text


def test_notify_warns_outside_a_notebook():
    from robust_nb.progress import in_notebook, notify

    assert not in_notebook()
    with pytest.warns(RuntimeWarning, match="rolled back"):
        notify("the guard rolled back to epoch 3")


def test_notify_is_a_note_not_stderr_in_a_kernel(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_TEXT_PROGRESS, raising=False)
    source = ("from robust_nb.progress import notify\n"
              "notify('the guard rolled back <to> epoch 3')")
    path = tmp_path / "98_note.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(source)]), path)
    executed, _ = execute_notebook(path, tmp_path / "out")
    outputs = executed.cells[0].outputs
    assert not any(o.output_type == "stream" and o.name == "stderr" for o in outputs)
    (note,) = [o for o in outputs if o.output_type == "display_data"]
    assert "rolled back &lt;to&gt; epoch 3" in note.data["text/html"]
    assert note.data["text/plain"] == "Note (RuntimeWarning): the guard rolled back <to> epoch 3"
