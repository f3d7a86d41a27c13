"""Drive ComfyUI's real web page (the pinned frontend) in headless Chromium through Playwright.

Used by the browser tests. Chromium comes from the system (Debian: ``apt-get install chromium``) or
``$IASA_CHROMIUM``; Playwright's own browser download is never used (``executable_path`` points at the
system one). Everything the page logs is collected so a test can tell the pack's errors from the
stock page's.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HOW_TO_GET_CHROMIUM = ("install Chromium (Debian/Ubuntu: `apt-get install chromium`; .ci/run does this) or set "
                       "IASA_CHROMIUM=/path/to/chromium; Playwright's own browser download is not used")
HOW_TO_GET_PLAYWRIGHT = "pip install playwright (scripts/setup.sh installs the pinned version)"


def find_chromium() -> str | None:
    """$IASA_CHROMIUM if it names an executable, else the first Chromium on PATH."""
    explicit = os.environ.get("IASA_CHROMIUM")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise FileNotFoundError(f"IASA_CHROMIUM={explicit!r} is not an executable file; {HOW_TO_GET_CHROMIUM}")
        return explicit
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here (a sentence with the fix), or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright is not installed: {HOW_TO_GET_PLAYWRIGHT}"
    if find_chromium() is None:
        return f"no Chromium found: {HOW_TO_GET_CHROMIUM}"
    return None


_PORT = re.compile(r"https?://(127\.0\.0\.1|localhost):\d+")
_POSITION = re.compile(r":\d+:\d+\b")


def normalise_message(text: str) -> str:
    """A console message without the server's address and script line:column (they differ between runs)."""
    return _POSITION.sub("", _PORT.sub("<server>", text)).strip()


@dataclass
class PageLog:
    """What a page reported, in order: console errors and warnings, uncaught exceptions, failed requests."""
    entries: list[tuple[str, str]] = field(default_factory=list)   # (kind, text)

    def attach(self, page) -> "PageLog":
        page.on("console", lambda m: m.type in ("error", "warning")
                and self.entries.append((f"console.{m.type}", m.text)))
        page.on("pageerror", lambda e: self.entries.append(("uncaught", f"{e}")))
        page.on("response", lambda r: r.status >= 400 and self.entries.append(("http", f"HTTP {r.status} {r.url}")))
        page.on("requestfailed", self._request_failed)
        return self

    def _request_failed(self, request) -> None:
        failure = request.failure or ""
        # Aborted media range requests are normal; CSP blocks are also reported on the console.
        if "ERR_ABORTED" not in failure and "csp" not in failure.lower():
            self.entries.append(("http", f"HTTP failed {request.url} ({failure})"))

    def errors(self) -> list[str]:
        """Every error so far, in order and normalised: console errors, uncaught exceptions, failed requests."""
        return [normalise_message(t) for kind, t in self.entries if kind != "console.warning"]

    def text(self) -> str:
        return "\n".join(f"{kind}: {t}" for kind, t in self.entries)


def new_errors(with_pack: list[str], baseline: list[str]) -> list[str]:
    """Errors of the page with the pack that the stock page (no custom nodes) does not also show,
    counted as multisets: an error the stock page shows once and the pack's page twice is new once."""
    left = list(baseline)
    out = []
    for e in with_pack:
        if e in left:
            left.remove(e)
        else:
            out.append(e)
    return out


def launch(playwright, **kwargs):
    """Headless Chromium from the system, never a downloaded one."""
    path = find_chromium()
    if path is None:
        raise FileNotFoundError(f"no Chromium found: {HOW_TO_GET_CHROMIUM}")
    args = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio"]
    return playwright.chromium.launch(executable_path=path, headless=True, args=args, **kwargs)


def open_comfy_page(browser, url: str, log: PageLog | None = None, timeout_ms: int = 120_000):
    """A new page with ComfyUI loaded and its app ready (graph and node definitions registered)."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    if log is not None:
        log.attach(page)
    page.set_default_timeout(timeout_ms)
    page.goto(url, wait_until="networkidle", timeout=timeout_ms)
    page.wait_for_function("window.app && window.app.graph && window.LiteGraph "
                           "&& Object.keys(LiteGraph.registered_node_types).length > 100", timeout=timeout_ms)
    return page


# ---- actions on the page, as a user does them (sidebar, template browser, node search, Run) ----

def close_overlays(page) -> None:
    """Close dialogs and toasts left open (Escape, then each toast's close button)."""
    for _ in range(3):
        if not page.locator("[role=dialog]").count():
            break
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)
    for button in page.locator(".p-toast-close-button").all():
        if button.is_visible():
            button.click()


def toasts(page) -> list[str]:
    """Texts of the toasts (alerts, warnings) the page shows now."""
    return [t.strip() for t in page.locator(".p-toast-message").all_inner_texts() if t.strip()]


def open_template_browser(page, category: str):
    """Open *Templates* from the sidebar (unless the first-run template dialog is already open) and
    pick ``category`` (a custom-node pack's folder name, listed under EXTENSIONS)."""
    search = page.get_by_placeholder("Search...")
    if not (search.count() and search.first.is_visible()):
        page.get_by_role("button", name="Templates", exact=True).click()
    page.get_by_text(category, exact=True).first.click()
    return page.locator("[data-testid=template-workflows-content]")


def template_card(page, name: str):
    return page.locator(f"[data-testid=template-workflow-{name}]")


def wait_for_thumbnail(card, timeout_ms: int = 30_000) -> dict:
    """Wait until the card's thumbnail image has loaded; its natural size and source."""
    img = card.locator("img").first
    img.wait_for(state="attached", timeout=timeout_ms)
    img.evaluate("i => i.complete && i.naturalWidth ? 0 : new Promise((ok, bad) => "
                 "{ i.onload = ok; i.onerror = () => bad(new Error('thumbnail failed: ' + i.src)); })")
    return img.evaluate("i => ({width: i.naturalWidth, height: i.naturalHeight, src: i.src})")


GRAPH_STATE_JS = """() => app.graph.nodes.map(n => ({
    id: n.id, type: n.type, title: n.title, registered: !!n.constructor.nodeData, has_errors: !!n.has_errors,
    widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type})),
    inputs: (n.inputs || []).map(i => ({name: i.name, type: i.type, widget: !!i.widget, link: i.link})),
    size: n.size ? [n.size[0], n.size[1]] : null,
}))"""


def graph_state(page) -> list[dict]:
    """Each node of the open graph: type, whether the frontend knows it, its widgets and inputs."""
    return page.evaluate(GRAPH_STATE_JS)


def graph_prompt(page) -> dict:
    """The API-format prompt the page would queue for the open graph (what Run posts)."""
    return page.evaluate("async () => (await app.graphToPrompt()).output")


def serialized_graph(page) -> dict:
    """The open graph as the page saves it (UI format)."""
    return page.evaluate("() => JSON.parse(JSON.stringify(app.graph.serialize()))")


def fit_view_and_count_drawn(page, timeout_ms: int = 10_000) -> tuple[int, int]:
    """Fit the whole graph into the canvas and return (nodes the canvas drew, nodes in the graph),
    waiting up to ``timeout_ms`` for the two to agree."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    try:
        page.wait_for_function("() => { app.canvas.setDirty(true, true); "
                               "return app.canvas.visible_nodes.length === app.graph.nodes.length; }",
                               timeout=timeout_ms, polling=200)
    except PlaywrightTimeout:
        pass  # the caller compares the counts and reports them
    return tuple(page.evaluate("() => [app.canvas.visible_nodes.length, app.graph.nodes.length]"))


def new_blank_workflow(page) -> None:
    page.get_by_role("button", name="Create a new blank workflow").click()
    page.wait_for_function("app.graph.nodes.length === 0")


def add_node_by_search(page, query: str, display_name: str) -> None:
    """Double-click empty canvas, type ``query`` in the node search and pick ``display_name``."""
    box = page.locator("#graph-canvas").bounding_box()
    search = page.get_by_placeholder("Search Nodes...").first
    for attempt in range(3):   # a double-click while the page is still busy can be lost: try again
        page.mouse.dblclick(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.45)
        try:
            search.wait_for(state="visible", timeout=20_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; the last attempt re-raises
            if attempt == 2:
                raise
            close_overlays(page)
    search.fill(query)
    option = page.get_by_role("option").filter(has_text=display_name).first
    option.wait_for(state="visible")
    option.click()
