"""Make UI-format workflows (what ComfyUI's template browser opens) from the API-format copies.

The API copies in workflows/api/ are the source of truth (the demo and the tests post them); the UI
files in workflows/ are generated from them with the node schemas of a running server:

    python iasa_cli.py harness.workflow_ui            # rewrites workflows/*.json from workflows/api/
    python iasa_cli.py harness.workflow_ui --check    # exits 1 if a UI file is stale
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import uuid

from .client import ComfyClient
from .server import REPO, ComfyServer

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COLUMN_WIDTH, ROW_HEIGHT = 380, 330


def _inputs_in_order(info: dict) -> list[tuple[str, object, dict]]:
    out = []
    for group in ("required", "optional"):
        for name in info.get("input_order", {}).get(group, list(info["input"].get(group, {}))):
            spec = info["input"][group][name]
            out.append((name, spec[0], spec[1] if len(spec) > 1 else {}))
    return out


def _is_widget(type_) -> bool:
    return isinstance(type_, list) or type_ in WIDGET_TYPES


def _inline_widget_values(opts: dict) -> list:
    """Values of widgets the frontend adds right after an input's own widget (the seed's control)."""
    return ["fixed"] if opts.get("control_after_generate") else []


def _trailing_widget_values(opts: dict) -> list:
    """Values of widgets the frontend adds after all of a node's declared inputs (they are not in its
    ``input_order``): the image or video upload button (its value is "image" for both); the audio player and
    its upload button."""
    if opts.get("image_upload") or opts.get("video_upload"):
        return ["image"]
    if opts.get("audio_upload"):
        return [None, None]
    return []


def workflow_uuid(workflow_id: str) -> str:
    """The frontend's workflow schema wants a UUID ``id`` (else: "Invalid workflow against zod schema");
    a name-based one keeps the generated files stable."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"iasa-comfyui/workflows/{workflow_id}"))


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def d(nid: str) -> int:
        if nid not in depth:
            parents = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((d(p) for p in parents), default=-1)
        return depth[nid]

    for nid in api:
        d(nid)
    return depth


def api_to_ui(api: dict, object_info: dict, workflow_id: str) -> dict:
    ids = {nid: int(nid) for nid in api}
    depth = _depths(api)
    rows: dict[int, int] = {}
    links, nodes = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    for order, nid in enumerate(sorted(api, key=lambda n: (depth[n], ids[n]))):
        node = api[nid]
        info = object_info[node["class_type"]]
        inputs, widgets, trailing = [], [], []
        for name, type_, opts in _inputs_in_order(info):
            value = node["inputs"].get(name)
            linked = isinstance(value, list)
            if _is_widget(type_):
                widgets.append(value if not linked else opts.get("default"))
                widgets += _inline_widget_values(opts)
                trailing += _trailing_widget_values(opts)
                if linked:
                    inputs.append({"name": name, "type": "COMBO" if isinstance(type_, list) else type_,
                                   "widget": {"name": name}, "link": None})
            elif linked or name in info["input"].get("required", {}) or name in node["inputs"]:
                inputs.append({"name": name, "type": type_, "link": None})
            elif name in info["input"].get("optional", {}):
                inputs.append({"name": name, "type": type_, "link": None, "shape": 7})
            if linked:
                link_id = len(links) + 1
                src, slot = ids[value[0]], value[1]
                src_type = object_info[api[value[0]]["class_type"]]["output"][slot]
                links.append([link_id, src, slot, ids[nid], len(inputs) - 1, src_type])
                inputs[-1]["link"] = link_id
                out_links.setdefault((src, slot), []).append(link_id)
        widgets += trailing
        col = depth[nid]
        row = rows.get(col, 0)
        rows[col] = row + 1
        nodes.append({
            "id": ids[nid], "type": node["class_type"], "pos": [col * COLUMN_WIDTH, row * ROW_HEIGHT],
            "size": [340, 120 + 26 * len(widgets)], "flags": {}, "order": order, "mode": 0,
            "inputs": inputs,
            "outputs": [{"name": n, "type": t, "links": None, "slot_index": i}
                        for i, (n, t) in enumerate(zip(info["output_name"], info["output"]))],
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets,
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    for n in nodes:
        for o in n["outputs"]:
            o["links"] = out_links.get((n["id"], o["slot_index"])) or None
    return {"id": workflow_uuid(workflow_id), "revision": 0,
            "last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}}, "version": 0.4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the UI files are up to date")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ComfyServer(pathlib.Path(tmp)) as srv:
        object_info = ComfyClient(srv.url).get_json("/object_info")
    stale = []
    for api_file in sorted((REPO / "workflows" / "api").glob("*.json")):
        ui = api_to_ui(json.loads(api_file.read_text()), object_info, api_file.stem)
        target = REPO / "workflows" / api_file.name
        text = json.dumps(ui, indent=1) + "\n"
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
            print("wrote", target.relative_to(REPO))
    if stale:
        sys.exit(f"stale UI workflows (run python iasa_cli.py harness.workflow_ui): {stale}")


if __name__ == "__main__":
    main()
