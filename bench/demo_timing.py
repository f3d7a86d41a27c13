"""Wall time of the README's demo (the IASA-mini talking video) on this machine -> bench/results/demo.json.

    python iasa_cli.py bench.demo_timing [--weights DIR] [--steps N] [--out bench/results/demo.json]

Runs exactly what ``scripts/demo.sh`` runs after set-up (``harness.demo``: a fresh headless ComfyUI, the
workflow ``workflows/api/iasa_mini_talking.json``, the bundled speaker and speech), in a temporary base
directory (``--base``, emptied first) so nothing is cached from an earlier run; the mp4 stays there.
``wall_s``: server start + workflow + reading the mp4;
``workflow_s``: queueing the prompt -> mp4 written (pose, VAE encode, sampling, decode, mp4).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import sys
import time

import soundfile as sf

from ..harness.demo import ASSETS, MINI_WORKFLOW, TEACHER_FILE, VAE_FILE, bundled_weights, run_demo, weights_from_dir
from ..harness.server import PACK_LINK_NAME, REPO
from .quality import weights_info, versions

RESULTS = REPO / "bench" / "results" / "demo.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=pathlib.Path, default=None,
                    help="folder with the two IASA-mini files (default: the bundled models/)")
    ap.add_argument("--steps", type=int, default=None, help="override the workflow's KSampler steps")
    ap.add_argument("--base", type=pathlib.Path, default=REPO / ".iasa" / "bench_demo",
                    help="ComfyUI base directory for the run (emptied first; the mp4 stays in its output/)")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    weights = weights_from_dir(a.weights) or bundled_weights()
    missing = [str(p) for p in weights.values() if not pathlib.Path(p).is_file()]
    if missing:
        sys.exit(f"bench.demo_timing: missing {missing}; bundle the IASA-mini weights (models/README.md) "
                 "or pass --weights")
    workflow = json.loads(MINI_WORKFLOW.read_text())
    sampler = next(n for n in workflow.values() if n["class_type"] == "KSampler")
    if a.steps:
        sampler["inputs"]["steps"] = a.steps
    fun = next(n for n in workflow.values() if n["class_type"] == "WanFunControlToVideo")
    speech = next(n for n in workflow.values() if n["class_type"] == "IASALoadAudio")["inputs"]["audio"]
    if a.base.exists() and any(a.base.iterdir()) and not (a.base / "custom_nodes" / PACK_LINK_NAME).is_symlink():
        sys.exit(f"bench.demo_timing: --base {a.base} is not empty and not a ComfyUI base made by this pack; "
                 "give a new or empty folder")
    shutil.rmtree(a.base, ignore_errors=True)
    a.base.mkdir(parents=True)
    wf_path = a.base / MINI_WORKFLOW.name
    wf_path.write_text(json.dumps(workflow))
    run = run_demo(wf_path, a.base, weights_from_dir(a.weights))
    result = {
        "command": "python iasa_cli.py bench.demo_timing " + " ".join(argv),
        "workflow": str(MINI_WORKFLOW.relative_to(REPO)),
        "seconds_audio": round(sf.info(str(ASSETS / speech)).duration, 3),
        "wall_s": round(run.total_s, 1), "workflow_s": round(run.workflow_s, 1),
        "server_start_s": round(run.server_start_s, 1),
        "steps": sampler["inputs"]["steps"], "cfg": sampler["inputs"]["cfg"],
        "sampler": sampler["inputs"]["sampler_name"],
        "frames": run.media.get("frames"), "fps": run.media.get("fps"),
        "width": run.media.get("width", fun["inputs"]["width"]),
        "height": run.media.get("height", fun["inputs"]["height"]),
        "video": os.path.relpath(run.video, REPO),
        "video_s": round(run.media.get("video", 0.0), 3), "audio_s": round(run.media.get("audio", 0.0), 3),
        "teacher": weights_info(pathlib.Path(weights[TEACHER_FILE])),
        "vae": weights_info(pathlib.Path(weights[VAE_FILE])),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "versions": versions(), "date": time.strftime("%Y-%m-%d"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("teacher", "vae")}, indent=1))
    print("wrote", a.out)
    return result


if __name__ == "__main__":
    main()
