"""The README's main job: boot ComfyUI headless, post the demo workflow, print the mp4's path.

    python iasa_cli.py harness.demo [--workflow workflows/api/<name>.json] [--base DIR]

Inputs are the bundled demo files (assets/demo); the output lands in the base directory's output folder.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import av

from .client import ComfyClient
from .server import REPO, ComfyServer, prepare_base

DEFAULT_WORKFLOW = REPO / "workflows" / "api" / "iasa_pose_video.json"
DEMO_INPUTS = [REPO / "assets" / "demo" / "speech.wav", REPO / "assets" / "demo" / "reference.jpg"]


def media_duration(path: pathlib.Path) -> dict:
    """Durations (s) of the video and audio streams of a media file, read with PyAV."""
    with av.open(str(path)) as c:
        out = {}
        for s in c.streams:
            if s.type in ("video", "audio") and s.duration is not None:
                out[s.type] = float(s.duration * s.time_base)
            if s.type == "video":
                out["frames"] = s.frames
                out["fps"] = float(s.average_rate)
        return out


def saved_files(outputs: dict) -> list[dict]:
    """Every file entry listed in a history's outputs (images, audio, animated video...)."""
    found = []
    for ui in outputs.values():
        for value in ui.values():
            if isinstance(value, list):
                found += [v for v in value if isinstance(v, dict) and "filename" in v]
    return found


def run_demo(workflow: pathlib.Path, base: pathlib.Path) -> pathlib.Path:
    prepare_base(base, DEMO_INPUTS)
    prompt = json.loads(workflow.read_text())
    t0 = time.monotonic()
    with ComfyServer(base) as server:
        print(f"[demo] ComfyUI up at {server.url} in {server.start_seconds:.1f} s; queueing {workflow.name}")
        result = ComfyClient(server.url).run(prompt, timeout=3600)
        if result.status != "success":
            err = result.error or {}
            sys.exit(f"[demo] workflow failed in node {err.get('node_id')} ({err.get('node_type')}): "
                     f"{err.get('exception_message', 'see the server log')}\n{server.log_tail(30)}")
    videos = [f for f in saved_files(result.outputs) if f["filename"].endswith(".mp4")]
    if not videos:
        sys.exit(f"[demo] the workflow produced no mp4; outputs: {result.outputs}")
    v = videos[0]
    path = base / "output" / v.get("subfolder", "") / v["filename"]
    info = media_duration(path)
    print(f"[demo] done in {time.monotonic() - t0:.1f} s: {info.get('frames')} frames at {info.get('fps'):.2f} fps, "
          f"video {info.get('video', 0):.2f} s, audio {info.get('audio', 0):.2f} s")
    print(path.resolve())
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", type=pathlib.Path, default=DEFAULT_WORKFLOW)
    ap.add_argument("--base", type=pathlib.Path, default=REPO / ".iasa" / "comfy_home")
    args = ap.parse_args()
    run_demo(args.workflow, args.base)


if __name__ == "__main__":
    main()
