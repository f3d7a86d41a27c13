"""ComfyUI's real web page in headless Chromium, against a real headless server with only this pack.

Fixtures are module-scoped: Playwright's sync API runs an event loop in this thread while it is open, and the
integration tests' client needs asyncio.run, so the browser closes when this module ends.

Skipped, with the reason and the fix, when Playwright or Chromium is missing; with
``IASA_REQUIRE_BROWSER=1`` (set by .ci/run) a missing browser is an error instead, so CI cannot pass
without running these tests. Screenshots and the page logs are written to ``$IASA_ARTIFACTS/browser``
(default ``.iasa/artifacts/browser`` in the checkout).
"""
from __future__ import annotations

import json
import os
import pathlib
import time
import urllib.request
from dataclasses import dataclass

import pytest

from iasa.harness.browser import PageLog, browser_unavailable, launch, open_comfy_page
from iasa.harness.demo import DEMO_INPUTS
from iasa.harness.server import REPO, ComfyServer, prepare_base

SETTLE_S = 3.0   # let late start-up requests (user files, i18n, release notes) finish before reading the log


def _require_browser() -> None:
    why = browser_unavailable()
    if why is None:
        return
    if os.environ.get("IASA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"IASA_REQUIRE_BROWSER=1 but the browser tests cannot run: {why}")
    pytest.skip(f"browser test skipped: {why}")


@pytest.fixture(scope="session")
def artifacts() -> pathlib.Path:
    root = pathlib.Path(os.environ.get("IASA_ARTIFACTS", REPO / ".iasa" / "artifacts")) / "browser"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def playwright_instance():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_instance):
    b = launch(playwright_instance)
    yield b
    b.close()


@pytest.fixture(scope="module")
def stock_page_errors(browser, tmp_path_factory, artifacts) -> list[str]:
    """Errors the stock page logs with no custom node at all (the same server, frontend and browser)."""
    base = tmp_path_factory.mktemp("comfy_home_stock")
    with ComfyServer(base, extra_args=("--disable-all-custom-nodes",)) as srv:
        log = PageLog()
        page = open_comfy_page(browser, srv.url, log)
        time.sleep(SETTLE_S)
        page.close()
    (artifacts / "stock_page_log.txt").write_text(log.text() + "\n")
    return log.errors()


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_home_web")
    prepare_base(base, DEMO_INPUTS)
    with ComfyServer(base) as srv:
        yield srv


@pytest.fixture(scope="module")
def web_object_info(web_server) -> dict:
    with urllib.request.urlopen(web_server.url + "/object_info", timeout=60) as r:
        return json.loads(r.read())


@dataclass
class PackPage:
    page: object            # playwright Page
    log: PageLog
    load_errors: list[str]  # errors logged while the page loaded


@pytest.fixture(scope="module")
def pack_page(browser, web_server, stock_page_errors, artifacts) -> PackPage:
    """One page with the pack, shared by the tests in order (loading the frontend costs ~15 s here)."""
    log = PageLog()
    page = open_comfy_page(browser, web_server.url, log)
    time.sleep(SETTLE_S)
    yield PackPage(page, log, log.errors())
    (artifacts / "pack_page_log.txt").write_text(log.text() + "\n")
    page.close()
