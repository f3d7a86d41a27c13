"""The pack in ComfyUI's real web page (pinned frontend, headless Chromium), as a user meets it: the page
loads clean, the template browser shows the pack's workflows with thumbnails, each template opens with
every node known and drawn and every widget where the file says, the node search finds IASA nodes, and
the pose-video template queued with the page's Run button finishes with its video playing in the page.
Screenshots go to $IASA_ARTIFACTS/browser (see conftest.py)."""
from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request

import pytest
from PIL import Image

from iasa.harness import browser as web
from iasa.harness.demo import saved_files
from iasa.harness.server import PACK_LINK_NAME, REPO

from .conftest import PackPage

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Widgets the frontend adds to upload nodes and posts with the prompt (as for stock LoadAudio / LoadVideo); the
# server passes a node only its declared inputs.
FRONTEND_ONLY_INPUTS = {"audioUI", "video-preview"}
RUN_TIMEOUT_MS = 300_000   # the pose-video workflow takes ~30 s on the 2-core CI machine
# The frontend asks the node registry (api.comfy.org) about every non-core node it shows; the page's
# Content-Security-Policy blocks that offline and logs it, for any custom node pack. Not the pack's error.
OFFLINE_REGISTRY_LOOKUP = re.compile(r"^Connecting to 'https://api\.comfy\.org/[^']*' violates the following "
                                     r"Content Security Policy directive")
# Owned by the IASA-mini talking work: regenerating its UI file (python iasa_cli.py harness.workflow_ui) fixes
# both faults below; strict, so the marker must go once it is regenerated.
TEMPLATE_PARAMS = UI_WORKFLOWS


def _pack_errors(errors: list[str]) -> list[str]:
    return [e for e in errors if not OFFLINE_REGISTRY_LOOKUP.match(e)]


def _errors_since(pack_page, start: int, stock_page_errors: list[str]) -> list[str]:
    """Errors logged since ``start`` that are neither the offline registry look-ups nor among the errors
    the stock page logs by itself (its missing user files, for example, are asked for again)."""
    stock = set(stock_page_errors)
    return [e for e in _pack_errors(pack_page.log.errors()[start:]) if e not in stock]


def _pack_node_ids(object_info: dict) -> list[str]:
    return sorted(k for k, v in object_info.items() if v["python_module"] == f"custom_nodes.{PACK_LINK_NAME}")


def _widget_inputs(info: dict) -> list[str]:
    names = []
    for group in ("required", "optional"):
        for name, spec in info["input"].get(group, {}).items():
            if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
                names.append(name)
    return names


def _wait_for_one_history_entry(url: str, page, artifacts) -> dict:
    """The server's history entry of the one prompt the page queued (the server ran nothing else)."""
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/history", timeout=60) as r:
            history = json.loads(r.read())
        with urllib.request.urlopen(url + "/queue", timeout=60) as r:
            queue = json.loads(r.read())
        if history:
            assert len(history) == 1, f"expected the one prompt queued from the page, got {len(history)}"
            return next(iter(history.values()))
        if not (queue["queue_running"] or queue["queue_pending"]) and time.monotonic() > deadline - RUN_TIMEOUT_MS / 1000 + 30:
            page.screenshot(path=str(artifacts / "05_run_not_queued.png"))
            pytest.fail("Run was clicked but the server has queued nothing for 30 s (see 05_run_not_queued.png)")
        time.sleep(1)
    page.screenshot(path=str(artifacts / "05_run_timeout.png"))
    pytest.fail(f"the prompt queued from the page did not finish in {RUN_TIMEOUT_MS / 1000:.0f} s")


def _load_template(page, name: str) -> None:
    web.close_overlays(page)
    web.open_template_browser(page, PACK_LINK_NAME)
    web.template_card(page, name).click()
    page.locator("[data-testid=template-workflows-content]").wait_for(state="detached")


def test_page_loads_without_errors_from_the_pack(pack_page, stock_page_errors, web_object_info, artifacts):
    page = pack_page.page
    page.screenshot(path=str(artifacts / "01_page_loaded.png"))
    new = _pack_errors(web.new_errors(pack_page.load_errors, stock_page_errors))
    assert not new, "the page logs errors with the pack that the stock page does not:\n" + "\n".join(new)
    assert page.evaluate("() => app.extensions.some(e => e.name === 'IASA.LoadAudioPlayer')"), \
        "the pack's web extension (web/iasa_load_audio.js) was not loaded"
    ids = _pack_node_ids(web_object_info)
    assert ids, "the server lists no node of the pack"
    registered = page.evaluate("ids => ids.filter(t => !!LiteGraph.registered_node_types[t])", ids)
    assert registered == ids


def test_every_pack_node_can_be_created_in_the_page(pack_page, web_object_info, stock_page_errors):
    """Creating a node runs every widget constructor: a widget the frontend cannot build throws here
    (IASA Load Audio's upload button did, until web/iasa_load_audio.js)."""
    page = pack_page.page
    start = len(pack_page.log.errors())
    for node_id in _pack_node_ids(web_object_info):
        made = page.evaluate("""t => { try { const n = LiteGraph.createNode(t);
            return n ? {widgets: (n.widgets || []).map(w => w.name)} : {error: 'createNode returned null'}; }
            catch (e) { return {error: String(e)}; } }""", node_id)
        assert "error" not in made, f"{node_id}: {made.get('error')}"
        missing = set(_widget_inputs(web_object_info[node_id])) - set(made["widgets"])
        assert not missing, f"{node_id}: no widget drawn for {sorted(missing)}"
    assert not _errors_since(pack_page, start, stock_page_errors)


def test_template_browser_lists_the_workflows_with_thumbnails(pack_page, artifacts):
    page = pack_page.page
    web.close_overlays(page)
    grid = web.open_template_browser(page, PACK_LINK_NAME)
    grid.wait_for(state="visible")
    assert UI_WORKFLOWS
    shown = sorted(t.removeprefix("template-workflow-") for t in
                   grid.locator("[data-testid^=template-workflow-]").evaluate_all("els => els.map(e => e.dataset.testid)"))
    assert shown == [w.stem for w in UI_WORKFLOWS]
    for workflow in UI_WORKFLOWS:
        thumb_file = workflow.with_suffix(".jpg")
        assert thumb_file.is_file(), f"no thumbnail {thumb_file.name} beside {workflow.name}"
        thumb = web.wait_for_thumbnail(web.template_card(page, workflow.stem))
        with Image.open(thumb_file) as im:
            assert (thumb["width"], thumb["height"]) == im.size, thumb
    page.screenshot(path=str(artifacts / "02_template_browser.png"))
    web.close_overlays(page)


@pytest.mark.parametrize("workflow", TEMPLATE_PARAMS, ids=lambda p: p.stem)
def test_template_loads_with_every_node_drawn(pack_page, web_object_info, artifacts, workflow, stock_page_errors):
    page = pack_page.page
    ui = json.loads(workflow.read_text())
    api = json.loads((REPO / "workflows" / "api" / workflow.name).read_text())
    start = len(pack_page.log.errors())
    _load_template(page, workflow.stem)
    page.wait_for_function("n => app.graph.nodes.length === n", arg=len(ui["nodes"]))
    page.wait_for_timeout(500)
    assert not web.toasts(page), f"the page showed alerts when {workflow.name} loaded: {web.toasts(page)}"
    nodes = web.graph_state(page)
    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in ui["nodes"])
    for node in nodes:
        assert node["registered"] and not node["has_errors"], f"missing-node state: {node['type']} (id {node['id']})"
        drawn = {w["name"] for w in node["widgets"]}
        missing = set(_widget_inputs(web_object_info[node["type"]])) - drawn
        assert not missing, f"{node['type']}: no widget for {sorted(missing)} (unknown widget type?)"
    # What Run would post is exactly the API copy the tests and the demo post.
    prompt = web.graph_prompt(page)
    assert sorted(prompt) == sorted(api)
    for nid, node in api.items():
        posted = dict(prompt[nid]["inputs"])
        extra = set(posted) - set(node["inputs"])
        assert extra <= FRONTEND_ONLY_INPUTS, f"node {nid} ({node['class_type']}) posts unknown inputs {extra}"
        for key in extra:
            del posted[key]
        assert (prompt[nid]["class_type"], posted) == (node["class_type"], node["inputs"]), f"node {nid}"
    # Saving it again gives the file's widget values (the template is what the page itself writes).
    saved = {n["id"]: n.get("widgets_values") for n in web.serialized_graph(page)["nodes"]}
    assert saved == {n["id"]: n["widgets_values"] for n in ui["nodes"]}
    drawn_count, total = web.fit_view_and_count_drawn(page)
    assert drawn_count == total, f"the canvas drew {drawn_count} of {total} nodes"
    page.screenshot(path=str(artifacts / f"03_template_{workflow.stem}.png"))
    assert not _errors_since(pack_page, start, stock_page_errors)


def test_node_search_finds_and_adds_an_iasa_node(pack_page, artifacts, stock_page_errors):
    page = pack_page.page
    web.close_overlays(page)
    web.new_blank_workflow(page)
    start = len(pack_page.log.errors())
    web.add_node_by_search(page, "IASA Extract Pose", "IASA Extract Pose")
    page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'IASAExtractPose')")
    node = next(n for n in web.graph_state(page) if n["type"] == "IASAExtractPose")
    assert node["registered"] and [w["name"] for w in node["widgets"]] == ["smoothing", "no_person"]
    page.screenshot(path=str(artifacts / "04_node_search_added.png"))
    assert not _errors_since(pack_page, start, stock_page_errors)


def test_pose_video_template_runs_from_the_page(browser, web_server, artifacts, stock_page_errors):
    """A fresh page, as a user opening ComfyUI to run the template (the shared page holds other tabs)."""
    log = web.PageLog()
    page = web.open_comfy_page(browser, web_server.url, log)
    run_page = PackPage(page, log, [])
    start = 0
    _load_template(page, "iasa_pose_video")
    page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'SaveVideo')")
    t0 = time.monotonic()
    page.get_by_role("button", name="Run", exact=True).click()
    entry = _wait_for_one_history_entry(web_server.url, page, artifacts)
    assert entry["status"]["status_str"] == "success", entry["status"]
    # The page hears over the websocket that the prompt finished; SaveVideo gets its video preview widget and
    # <video> element when the node is drawn, so bring the whole graph on screen (as a user scrolls to it).
    web.fit_view_and_count_drawn(page)
    page.wait_for_function("() => app.graph.nodes.find(n => n.type === 'SaveVideo')"
                           ".widgets.some(w => w.name === 'video-preview')", timeout=30_000, polling=500)
    video = page.locator("video[src*='pose_video']").first
    video.wait_for(state="attached", timeout=30_000)
    page.wait_for_function("v => v.readyState >= 2 && v.videoWidth > 0", arg=video.element_handle(), timeout=60_000)
    seconds = time.monotonic() - t0
    info = video.evaluate("v => ({width: v.videoWidth, height: v.videoHeight, duration: v.duration, src: v.src})")
    assert info["width"] == 512 and info["height"] == 512, info
    assert abs(info["duration"] - 6.79) < 0.2, info      # as long as the bundled speech
    mp4 = [f["filename"] for f in saved_files(entry["outputs"]) if f["filename"].endswith(".mp4")]
    assert mp4 and mp4[0] in urllib.parse.unquote(info["src"]), (mp4, info["src"])
    page.wait_for_timeout(500)
    page.screenshot(path=str(artifacts / "05_pose_video_ran.png"))
    (artifacts / "05_pose_video_ran.txt").write_text(f"Run -> video shown in the page: {seconds:.1f} s\n{info}\n"
                                                     + log.text() + "\n")
    assert not _errors_since(run_page, start, stock_page_errors)
    page.close()
