"""Drive the course in a real JupyterLab in headless Chromium (Playwright): start and stop the
server and the browser by their process ids, open a notebook, Run All, and read what a learner
sees from the page (error outputs, figures, widgets, the explorers' text readouts).

Used by ``test_jupyterlab.py``; every check raises ``AssertionError`` with what the page showed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
CHROMIUM_NAMES = ("chromium", "chromium-browser")
ENV_CHROMIUM = "ROBUST_NB_CHROMIUM"

HOW_TO_ENABLE = (
    "To enable the JupyterLab browser test: install Debian's Chromium (`sudo apt-get install chromium`; "
    f"or point ${ENV_CHROMIUM} at a Chromium/Chrome executable) and the Playwright Python package "
    "(`pip install playwright`, part of the `test` extra). The test never downloads a browser.")

# JupyterLab settings for a test run (JUPYTERLAB_SETTINGS_DIR): no news/update toast over the
# outputs, no autosave, and every cell in the DOM (no windowing), so the page can be read whole.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

STDERR_MIME = "application/vnd.jupyter.stderr"     # JupyterLab renders tracebacks and stderr with it
ERROR_CSS_IN = f'.jp-OutputArea-output[data-mime-type="{STDERR_MIME}"]'
ERROR_CSS = f".jp-Notebook {ERROR_CSS_IN}"
READOUT_CLASS = "rnb-readout"                       # robust_nb.widgets.READOUT_CLASS


def find_chromium() -> str | None:
    """The Chromium executable: ``$ROBUST_NB_CHROMIUM``, else ``chromium`` or ``chromium-browser``
    on the PATH; None if there is none."""
    env = os.environ.get(ENV_CHROMIUM)
    if env:
        return env if Path(env).is_file() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(procs: list[psutil.Process], timeout: float = 10.0) -> list[int]:
    """SIGTERM the processes still alive, SIGKILL those still alive ``timeout`` s later; returns
    the ids that had to be killed."""
    alive = [p for p in procs if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(alive, timeout=timeout)
    for p in still:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(still, timeout=timeout)
    return [p.pid for p in still]


@dataclass
class Lab:
    """A running ``jupyter lab`` serving ``root`` (the process, its URL and token)."""

    proc: subprocess.Popen
    root: Path
    url: str
    token: str
    log: Path

    def notebook_url(self, name: str) -> str:
        """``name`` alone in a fresh workspace (``reset``: no tab of an earlier page restored)."""
        workspace = "".join(c if c.isalnum() else "-" for c in name)
        return f"{self.url}/lab/workspaces/{workspace}/tree/{name}?reset&token={self.token}"

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def api(self, path: str, method: str = "GET"):
        """The server's REST API (``path`` from ``/api``); the decoded JSON answer, None if empty."""
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Shut down every running kernel (a finished test's notebook kernel holds memory)."""
        for kernel in self.api("/api/kernels"):
            self.api(f"/api/kernels/{kernel['id']}", method="DELETE")

    def stop(self) -> None:
        """Stop the server and everything it started (its kernels), by process id: the kernels
        are collected before the server goes, then SIGTERM (the server shuts its kernels down),
        SIGKILL for whatever is left."""
        try:
            server = psutil.Process(self.proc.pid)
            procs = [*server.children(recursive=True), server]
        except psutil.NoSuchProcess:
            procs = []
        stop_processes(procs)
        self.proc.wait(timeout=10)


def start_lab(root: Path, env: dict, log: Path, timeout: float = 90.0) -> Lab:
    """Start ``jupyter lab`` on 127.0.0.1 (a free port, a random token, as root if need be) serving
    ``root``, with :data:`LAB_SETTINGS`; return once its API answers. Raises RuntimeError with the
    server's log if it exits or does not answer within ``timeout`` s."""
    settings = log.parent / "lab-settings"
    for rel, values in LAB_SETTINGS.items():
        path = settings / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**env, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(log.parent / "lab-workspaces")}
    port, token = free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
    lab = Lab(proc, root, f"http://127.0.0.1:{port}", token, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode}:\n{lab.log_tail()}")
        try:
            lab.api("/api/status")
            return lab
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            if time.monotonic() > deadline:
                lab.stop()
                raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s ({err}):\n"
                                   f"{lab.log_tail()}") from err
        time.sleep(0.25)          # poll the API until the server answers (checked above)


# ----------------------------------------------------------------------------- the page

# Every code cell's input prompt: "[ ]:" never run, "[*]:" queued or running, "[12]:" done.
PROMPTS_JS = """() => Array.from(document.querySelectorAll(
    '.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')).map(e => e.textContent.trim())"""

# The kernel item of the status bar ("Python 3 (ipykernel) | Idle"): the toolbar's indicator also
# says "idle" while the kernel is still initializing, and cells run then are silently dropped.
KERNEL_IDLE_JS = """() => Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'))
    .some(e => /^(?!No Kernel).+ \\| Idle$/.test(e.textContent.trim()))"""


def open_notebook(page, lab: Lab, name: str, timeout_s: float = 120) -> None:
    """Open ``name`` and wait until its kernel is idle."""
    page.goto(lab.notebook_url(name))
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=timeout_s * 1000)
    page.wait_for_function(KERNEL_IDLE_JS, timeout=timeout_s * 1000)
    panels = page.locator(".jp-NotebookPanel").count()
    assert panels == 1, f"{name}: expected only this notebook open in the page, found {panels} notebooks"


def run_all(page, timeout_s: float) -> list[str]:
    """Run > Run All Cells, then wait until the kernel is idle and either every code cell has run
    or a cell failed (Run All stops there); returns the input prompts."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    try:
        page.wait_for_function(
            f"""() => {{
                const prompts = ({PROMPTS_JS})();
                const ran = prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t));
                const failed = document.querySelector({json.dumps(ERROR_CSS)}) !== null;
                return (ran || failed) && !prompts.some(t => t.includes('*')) && ({KERNEL_IDLE_JS})();
            }}""", timeout=timeout_s * 1000, polling=500)
    except PlaywrightTimeout:
        status = page.evaluate("() => Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'))"
                               ".map(e => e.textContent.trim()).filter(t => t.includes('|'))")
        raise AssertionError(f"Run All did not finish within {timeout_s:.0f} s: prompts "
                             f"{page.evaluate(PROMPTS_JS)}, kernel {status}") from None
    return page.evaluate(PROMPTS_JS)


def error_outputs(page, within=None) -> list[str]:
    """The text of every error or stderr output in the notebook (or inside the locator ``within``):
    a traceback or a warning block, what a learner sees as a pink box; and of every widget that
    failed to render."""
    root = (within or page.locator(".jp-Notebook")).element_handle()
    return page.evaluate(f"""(root) => {{
        const errs = Array.from(root.querySelectorAll({json.dumps(ERROR_CSS_IN)}))
            .map(e => e.textContent.trim().slice(0, 3000));
        const widgets = Array.from(root.querySelectorAll('.jp-OutputArea-output'))
            .map(e => e.textContent).filter(t => t.includes('Error displaying widget'));
        return errs.concat(widgets);
    }}""", root)


def figures(page) -> list[dict]:
    """Every image output in the notebook: whether it decoded, and its size in pixels."""
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-Notebook .jp-OutputArea-output img')).map(img => ({
            loaded: img.complete && img.naturalWidth > 0, width: img.naturalWidth,
            height: img.naturalHeight}))""")


def progress_bars(page) -> list[dict]:
    """tqdm bars drawn as widgets (an HBox with a progress bar and its text): their text (spaces
    normalised) and the bar's filled width."""
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-Notebook .widget-hbox')).filter(b => b.querySelector('.widget-progress, .progress'))
        .map(b => ({text: b.textContent.replace(/\\s+/g, ' ').trim(),     // tqdm pads with U+2007
                    value: (b.querySelector('.progress-bar') || {}).style?.width || ''}))""")


def cell_with(page, css: str):
    """The notebook cell whose output contains ``css`` (exactly one)."""
    cell = page.locator(".jp-Notebook .jp-CodeCell", has=page.locator(css))
    assert cell.count() == 1, f"expected one cell showing {css}, found {cell.count()}"
    return cell


def widget_state(widget) -> tuple[str, str]:
    """(text readout, ``src`` of the figure) of an explorer; the figure is a data URL, so its
    ``src`` changes with its pixels ("" when none is shown)."""
    img = widget.locator(".widget-output img")
    return (widget.locator(f".{READOUT_CLASS}").inner_text().strip(),
            img.first.get_attribute("src") if img.count() else "")


def _labelled(widget, kind: str, label: str):
    """The one visible control of CSS class ``kind`` labelled ``label`` in ``widget``."""
    box = widget.locator(f".{kind}:visible", has=widget.page.locator("label.widget-label", has_text=label))
    assert box.count() == 1, f"expected one visible {kind} labelled {label!r}, found {box.count()}"
    return box


def set_slider(widget, label: str, value: str) -> None:
    """Type ``value`` into the number beside the slider labelled ``label`` and press Enter, as a
    learner can (the same message to the kernel as dragging the handle there)."""
    field = _labelled(widget, "widget-slider", label).locator(".widget-readout")
    field.click()
    field.press("Control+a")
    field.type(value)
    field.press("Enter")


def slider_value(widget, label: str) -> str:
    """The number shown beside the slider labelled ``label``."""
    return _labelled(widget, "widget-slider", label).locator(".widget-readout").inner_text().strip()


def choose(widget, label: str, value: str) -> None:
    """Pick ``value`` in the dropdown labelled ``label``."""
    _labelled(widget, "widget-dropdown", label).locator("select").select_option(value)


def wait_for_readout(widget, before: tuple[str, str], pattern: str, what: str, new_figure: bool = False,
                     timeout_s: float = 60) -> tuple[str, str]:
    """Wait until the explorer's :func:`widget_state` differs from ``before`` and its readout
    matches the regular expression ``pattern`` (and, with ``new_figure``, its figure differs from
    ``before``'s); returns the new state. AssertionError naming ``what`` if an error shows in the
    widget, or if it does not get there within ``timeout_s`` (a widget that stopped responding, or
    that shows the wrong thing)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        widget.page.wait_for_function(
            f"""([el, before, pattern, newFigure]) => {{
                if (el.querySelector({json.dumps(ERROR_CSS_IN)}) !== null) return true;
                const text = el.querySelector('.{READOUT_CLASS}').textContent.trim();
                const img = el.querySelector('.widget-output img');
                const src = img === null ? '' : img.getAttribute('src');
                const changed = newFigure ? (src !== '' && src !== before[1])
                                          : (text !== before[0] || src !== before[1]);
                return changed && new RegExp(pattern).test(text);
            }}""", arg=[widget.element_handle(), list(before), pattern, new_figure],
            timeout=timeout_s * 1000, polling=200)
    except PlaywrightTimeout:
        now = widget_state(widget)[0]
        raise AssertionError(f"{what}: the widget did not show /{pattern}/ within {timeout_s:.0f} s; "
                             f"its readout says {now!r} (before: {before[0]!r})") from None
    errors = error_outputs(widget.page, widget)
    assert not errors, f"{what}: the widget shows an error:\n{errors[0]}"
    return widget_state(widget)


def screenshot_notebook(page, path: Path, max_height: int = 16000) -> None:
    """A PNG of the whole notebook from its top: the viewport stretched to the notebook's height
    (at most ``max_height`` px), then restored."""
    size = page.viewport_size
    height = page.evaluate("""() => {
        const panes = Array.from(document.querySelectorAll(
            '.jp-NotebookPanel .jp-WindowedPanel-outer, .jp-NotebookPanel .jp-Notebook'));
        panes.forEach(p => { p.scrollTop = 0; });
        return Math.max(...panes.map(p => p.scrollHeight));
    }""")
    page.set_viewport_size({"width": size["width"], "height": min(max_height, height + 150)})
    try:
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
