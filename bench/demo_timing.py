"""Wall time of the README's demo (the IASA-mini talking video) on this machine -> bench/results/demo.json.

    python iasa_cli.py bench.demo_timing [--weights DIR] [--steps N] [--out bench/results/demo.json]

Runs exactly what ``scripts/demo.sh`` runs after set-up (``harness.demo``: a fresh headless ComfyUI, the
workflow the demo chooses (``harness.demo.choose_workflow``: the student's ``workflows/api/iasa_mini_student.json``
when the distilled student is bundled, else the teacher's ``iasa_mini_talking_v2.json``; ``--workflow`` picks
one), the bundled speaker and speech), in a temporary base
directory (``--base``, emptied first) so nothing is cached from an earlier run; the mp4 stays there.
``wall_s``: server start + workflow + reading the mp4;
``workflow_s``: queueing the prompt -> mp4 written (pose, VAE encode, sampling, decode, mp4).
``decode_s``: decoding a latent of the demo's shape in this process on the CPU through ComfyUI's VAE class
(what VAEDecode calls), with the IASA-mini VAE in fp32 (``vae``, ComfyUI's CPU default) and bf16 (``vae_bf16``, what
IASA VAE Precision gives on a CPU with native bf16; ``vae_bf16_channels_last`` also with its ``memory_format``
``auto`` on a CPU) and, when present (``--tiny-vae``), the tiny autoencoder: as
stock ComfyUI runs it (frame by frame, ``tiny_vae``) and with all frames at once (``tiny_vae_parallel``).
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

from ..harness.demo import (ASSETS, STUDENT_FILE, TEACHER_FILE, VAE_FILE, bundled_weights, choose_workflow, run_demo,
                            talking_workflow_for, weights_from_dir)
from ..harness.server import PACK_LINK_NAME, REPO
from ..sampling.vae_precision import with_precision
from ..training.tiny_vae import VAE_FILE as TINY_VAE_FILE, with_all_frames_at_once
from .quality import FUN_CONTROL_NODES, SAMPLER_NODES, repo_path, sampler_settings, stock_vae, weights_info
from .run_info import versions

RESULTS = REPO / "bench" / "results" / "demo.json"
TINY_VAE = REPO / "models" / "vae" / TINY_VAE_FILE


def decode_seconds(vae_path: pathlib.Path, tiny_path: pathlib.Path | None, frames: int, height: int,
                   width: int) -> dict:
    """Seconds of ``vae.decode`` for a ``[1, 16, 1 + (frames - 1) // 4, height / 8, width / 8]`` latent (values
    do not change the time), one warm-up on a 1-frame latent first."""
    import torch

    latent = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, generator=torch.Generator().manual_seed(0))
    full = stock_vae(vae_path)
    runs = [("vae", full), ("vae_bf16", with_precision(full, "bf16")),
            ("vae_bf16_channels_last", with_precision(full, "bf16", memory_format="channels_last"))]
    if tiny_path is not None:
        fast = stock_vae(tiny_path)
        runs += [("tiny_vae", with_all_frames_at_once(fast, False)), ("tiny_vae_parallel", fast)]
    out = {}
    for name, vae in runs:
        with torch.inference_mode():
            vae.decode(latent[:, :, :1])
            t0 = time.perf_counter()
            vae.decode(latent)
            out[name] = round(time.perf_counter() - t0, 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=pathlib.Path, default=None,
                    help="folder with the two IASA-mini files (default: the bundled models/)")
    ap.add_argument("--steps", type=int, default=None, help="override the workflow's sampler steps")
    ap.add_argument("--workflow", type=pathlib.Path, default=None,
                    help="API workflow to time (default: the one the demo chooses for the bundled weights)")
    ap.add_argument("--base", type=pathlib.Path, default=REPO / ".iasa" / "bench_demo",
                    help="ComfyUI base directory for the run (emptied first; the mp4 stays in its output/)")
    ap.add_argument("--tiny-vae", default=str(TINY_VAE),
                    help="tiny autoencoder whose CPU decode time is reported ('none': skip; default the bundled one)")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    weights = weights_from_dir(a.weights) or bundled_weights()
    missing = [str(p) for p in weights.values() if not pathlib.Path(p).is_file()]
    if missing:
        sys.exit(f"bench.demo_timing: missing {missing}; bundle the IASA-mini weights (models/README.md) "
                 "or pass --weights")
    workflow_path = a.workflow or (talking_workflow_for(weights[TEACHER_FILE]) if a.weights else choose_workflow())
    workflow = json.loads(workflow_path.read_text())
    sampler = next(n for n in workflow.values() if n["class_type"] in SAMPLER_NODES)
    student = sampler["class_type"] == "IASAStudentSampler"
    unet = next(n for n in workflow.values() if n["class_type"] == "UNETLoader")["inputs"]["unet_name"]
    model_path = pathlib.Path(weights[TEACHER_FILE]).parent / unet
    if not model_path.is_file():
        sys.exit(f"bench.demo_timing: {workflow_path.name} loads {unet}, which is not at {model_path}")
    if a.steps:
        sampler["inputs"]["steps"] = a.steps
    fun = next(n for n in workflow.values() if n["class_type"] in FUN_CONTROL_NODES)
    speech = next(n for n in workflow.values() if n["class_type"] == "IASALoadAudio")["inputs"]["audio"]
    if a.base.exists() and any(a.base.iterdir()) and not (a.base / "custom_nodes" / PACK_LINK_NAME).is_symlink():
        sys.exit(f"bench.demo_timing: --base {a.base} is not empty and not a ComfyUI base made by this pack; "
                 "give a new or empty folder")
    shutil.rmtree(a.base, ignore_errors=True)
    a.base.mkdir(parents=True)
    wf_path = a.base / workflow_path.name
    wf_path.write_text(json.dumps(workflow))
    linked = weights_from_dir(a.weights)
    if linked and student:
        linked[STUDENT_FILE] = model_path
    run = run_demo(wf_path, a.base, linked)
    tiny = None if a.tiny_vae == "none" or not pathlib.Path(a.tiny_vae).is_file() else pathlib.Path(a.tiny_vae)
    if tiny is None and a.tiny_vae != "none":
        print(f"bench.demo_timing: no tiny autoencoder at {a.tiny_vae}: its decode time is not measured")
    n_frames = run.media.get("frames") or 1
    size = (run.media.get("height", fun["inputs"]["height"]), run.media.get("width", fun["inputs"]["width"]))
    decode = decode_seconds(pathlib.Path(weights[VAE_FILE]), tiny, n_frames, *size)
    result = {
        "command": "python iasa_cli.py bench.demo_timing " + " ".join(argv),
        "workflow": repo_path(workflow_path),
        "seconds_audio": round(sf.info(str(ASSETS / speech)).duration, 3),
        "wall_s": round(run.total_s, 1), "workflow_s": round(run.workflow_s, 1),
        "server_start_s": round(run.server_start_s, 1),
        **sampler_settings(workflow, model_path),
        "frames": run.media.get("frames"), "fps": run.media.get("fps"),
        "width": run.media.get("width", fun["inputs"]["width"]),
        "height": run.media.get("height", fun["inputs"]["height"]),
        "video": os.path.relpath(run.video, REPO),
        "video_s": round(run.media.get("video", 0.0), 3), "audio_s": round(run.media.get("audio", 0.0), 3),
        "teacher": weights_info(pathlib.Path(weights[TEACHER_FILE])),
        "student": weights_info(model_path) if student else None,
        "vae": weights_info(pathlib.Path(weights[VAE_FILE])),
        "decode_s": decode, "decode_frames": n_frames, "tiny_vae": weights_info(tiny) if tiny else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "versions": versions(()), "date": time.strftime("%Y-%m-%d"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("teacher", "student", "vae", "tiny_vae")}, indent=1))
    print("wrote", a.out)
    return result


if __name__ == "__main__":
    main()
