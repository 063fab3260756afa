"""Fixtures of the JupyterLab browser test: Chromium (or a skip that says how to get it), one
``jupyter lab`` and one headless browser per session, stopped by process id whatever happens."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import labdriver
import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "results" / "screenshots"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable and an importable Playwright; else a skip that says why and how to
    enable the test, or a failure under CI (``$CI`` set), where the test must run."""
    path = labdriver.find_chromium()
    try:
        import playwright.sync_api  # noqa: F401
        missing = None if path else "no Chromium executable (chromium or chromium-browser on the PATH)"
    except ImportError:
        missing = "the playwright Python package is not installed"
    if missing:
        message = f"JupyterLab browser test not run: {missing}. {labdriver.HOW_TO_ENABLE}"
        if os.environ.get("CI"):
            pytest.fail(message + " ($CI is set: CI must run it; .ci/run installs Chromium.)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """A ``jupyter lab`` serving a temporary folder (the tests copy notebooks into ``lab.root``, so
    nothing is ever saved into notebooks/); its kernels draw tqdm bars as widgets."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ROBUST_NB_TEXT_PROGRESS"}
    server = labdriver.start_lab(root, env, base / "jupyterlab.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser(chromium):
    """Headless Chromium via Playwright (never a downloaded browser). The driver and the browser
    are this process's new children; whatever of them outlives Playwright's own shutdown is
    stopped by process id."""
    from playwright.sync_api import sync_playwright

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    pw = sync_playwright().start()
    started: list[psutil.Process] = []
    try:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=labdriver.CHROMIUM_ARGS)
        started = [p for p in me.children(recursive=True) if p.pid not in before]   # driver, browser
        try:
            yield browser
        finally:
            browser.close()
    finally:
        for p in list(started):
            try:
                started += p.children(recursive=True)                # renderers started since
            except psutil.NoSuchProcess:
                pass
        pw.stop()
        labdriver.stop_processes(started)


@pytest.fixture
def page(browser, lab):
    """A fresh browser page (its own context); the kernels it started are shut down after the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()
        lab.shutdown_kernels()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def course_notebook(lab):
    """Copy notebooks/<name> into the server's folder and return its name."""
    def copy(name: str) -> str:
        shutil.copy(REPO / "notebooks" / name, lab.root / name)
        return name
    return copy
