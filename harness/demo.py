"""The README's main job: boot ComfyUI headless, post the demo workflow, print the mp4's path.

    python iasa_cli.py harness.demo [--workflow workflows/api/<name>.json] [--base DIR] [--weights DIR]

Default workflow: the IASA-mini talking video (bundled synthetic speaker + speech -> pose -> IASA-mini
through stock Wan Fun-Control nodes -> mp4 with sound) when the bundled teacher and VAE are in ``models/``:
the workflow the teacher was trained for (``iasa_mini_talking.json`` for v1, ``iasa_mini_talking_v2.json``
for v2), or, when a v2 pair has its distilled student beside it (``models/diffusion_models/
iasa_mini_student.safetensors``) and the tiny autoencoder it encodes the pose video with (``models/vae/
iasa_mini_tiny_vae.safetensors``), the student workflow ``iasa_mini_student.json`` (few steps, no CFG; a
printed line says so). Otherwise the pose-video workflow, with a printed note.
Inputs are the bundled demo files (assets/demo); the output lands in the base directory's output folder.
``--weights DIR`` uses ``DIR/iasa_mini_teacher.safetensors`` and ``DIR/iasa_mini_vae.safetensors`` instead of
the bundled ones (linked into the base directory's model folders for this run only).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time
from dataclasses import dataclass, field

import av

from .client import ComfyClient
from .server import REPO, ComfyServer, prepare_base

MINI_V2_WORKFLOW = REPO / "workflows" / "api" / "iasa_mini_talking_v2.json"  # v2: ref_conv tokens, sparse, long video
STUDENT_WORKFLOW = REPO / "workflows" / "api" / "iasa_mini_student.json"     # the v2 teacher's few-step student
POSE_WORKFLOW = REPO / "workflows" / "api" / "iasa_pose_video.json"
ASSETS = REPO / "assets" / "demo"
DEMO_INPUTS = [ASSETS / "speech.wav", ASSETS / "reference.jpg", ASSETS / "driving.mp4", ASSETS / "synth_speaker.png",
               ASSETS / "synth_speaker_pose.json"]
# Bundled IASA-mini weights: file name -> ComfyUI model folder key (pack folder models/<key>/).
TEACHER_FILE, VAE_FILE = "iasa_mini_teacher.safetensors", "iasa_mini_vae.safetensors"
MINI_WEIGHTS = {TEACHER_FILE: "diffusion_models", VAE_FILE: "vae"}
STUDENT_FILE = "iasa_mini_student.safetensors"   # the v2 teacher's 4-step student (scripts/distill_iasa_mini_gpu.sh)
LINKABLE_WEIGHTS = {**MINI_WEIGHTS, STUDENT_FILE: "diffusion_models"}   # what linked_weights can place


def bundled_weights(models_dir: pathlib.Path = REPO / "models") -> dict[str, pathlib.Path]:
    """Paths of the bundled IASA-mini files, present or not."""
    return {name: models_dir / key / name for name, key in MINI_WEIGHTS.items()}


def missing_weights(models_dir: pathlib.Path = REPO / "models") -> list[pathlib.Path]:
    return [p for p in bundled_weights(models_dir).values() if not p.is_file()]


def talking_workflow_for(teacher: pathlib.Path) -> pathlib.Path:
    """The talking workflow of a v2 teacher file (``ref_conv.weight``: the reference picture as tokens,
    Wan22FunControlToVideo). A v1 file (reference as a start image, shipped until 2026-12-02) is refused by
    name: no bundled workflow runs it any more."""
    from safetensors import safe_open

    try:
        with safe_open(str(teacher), framework="pt") as f:
            v2 = "ref_conv.weight" in f.keys()
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"teacher weights {teacher} are not a readable safetensors file ({e}); "
                         "restore them from the repository (models/README.md)") from e
    if not v2:
        raise ValueError(f"teacher weights {teacher} are an IASA-mini v1 file (no ref_conv.weight: the reference "
                         "as a start image), which the bundled workflows no longer run; restore the bundled v2 "
                         "file with `git checkout -- models/diffusion_models/iasa_mini_teacher.safetensors` "
                         "(models/README.md)")
    return MINI_V2_WORKFLOW


def is_v2_student(path: pathlib.Path) -> bool:
    """Whether a file is a student (a card with ``student`` in its header) of a v2 teacher (``ref_conv``
    weights); a file that is neither raises, naming it and the fix."""
    from safetensors import safe_open

    from ..training.tiny_wan import CARD_KEY

    fix = "remove it, or replace it with the student scripts/distill_iasa_mini_gpu.sh writes (models/README.md)"
    try:
        with safe_open(str(path), framework="pt") as f:
            ref_conv, card = "ref_conv.weight" in f.keys(), json.loads((f.metadata() or {}).get(CARD_KEY) or "{}")
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"student weights {path} are not a readable safetensors file ({e}); {fix}") from e
    if not isinstance(card, dict) or "student" not in card:
        raise ValueError(f"student weights {path} have no student card (no 'student' timesteps in the header key "
                         f"{CARD_KEY!r}), so IASA Student Sampler cannot sample them; {fix}")
    return ref_conv


def choose_workflow(models_dir: pathlib.Path = REPO / "models") -> pathlib.Path:
    """The talking-video workflow of the bundled weights when the teacher and VAE exist: the student's when a
    v2 pair has its student and the tiny autoencoder beside it, else the teacher's; without them the pose video
    (with a note)."""
    missing = missing_weights(models_dir)
    if not missing:
        teacher_workflow = talking_workflow_for(bundled_weights(models_dir)[TEACHER_FILE])
        student = models_dir / "diffusion_models" / STUDENT_FILE
        if not student.is_file():
            return teacher_workflow
        if not is_v2_student(student):
            print(f"[demo] NOTE: {student} is not used: the student workflow needs a v2 student (ref_conv weights) "
                  f"next to the v2 teacher and VAE it was distilled from; running {teacher_workflow.name} instead")
            return teacher_workflow
        from ..training.tiny_vae import VAE_FILE as TINY_VAE_FILE   # the student workflow encodes with it

        tiny = models_dir / "vae" / TINY_VAE_FILE
        if not tiny.is_file():
            print(f"[demo] NOTE: {student} is not used: the student workflow encodes the pose video with the tiny "
                  f"autoencoder {tiny}, which is missing (restore it: git checkout -- models/vae/{TINY_VAE_FILE}); "
                  f"running {teacher_workflow.name} instead")
            return teacher_workflow
        print(f"[demo] the distilled student {student} is there: running {STUDENT_WORKFLOW.name} (few steps, no "
              f"CFG, sparse, long video); the teacher's {MINI_V2_WORKFLOW.name} stays a template")
        return STUDENT_WORKFLOW
    print("[demo] NOTE: the bundled IASA-mini model is missing ("
          + ", ".join(str(p) for p in missing)
          + "); running the pose-video workflow instead (speech -> pose -> skeleton video with sound). "
            "Put the weights there (see models/README.md) for the talking video.")
    return POSE_WORKFLOW


@contextlib.contextmanager
def linked_weights(base: pathlib.Path, files: dict[str, pathlib.Path] | None):
    """Link weight files (``{bundled file name: path}``) into the base's model folders for one run, so
    they are used instead of the bundled ones (the base's folders come first); removed afterwards."""
    links = []
    try:
        for name, path in (files or {}).items():
            src = pathlib.Path(path).resolve()
            if not src.is_file():
                raise FileNotFoundError(f"{path}: no such weights file (wanted for {name})")
            if name not in LINKABLE_WEIGHTS:
                raise ValueError(f"{name}: not a bundled IASA-mini file name ({', '.join(LINKABLE_WEIGHTS)})")
            dst = base / "models" / LINKABLE_WEIGHTS[name] / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink() or dst.exists():
                raise FileExistsError(f"{dst} already exists; remove it or use another --base")
            dst.symlink_to(src)
            links.append(dst)
        yield links
    finally:
        for link in links:
            link.unlink(missing_ok=True)


def weights_from_dir(weights_dir: pathlib.Path | None) -> dict[str, pathlib.Path] | None:
    return None if weights_dir is None else {name: weights_dir / name for name in MINI_WEIGHTS}


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
                out["width"] = s.codec_context.width
                out["height"] = s.codec_context.height
        return out


def saved_files(outputs: dict) -> list[dict]:
    """Every file entry listed in a history's outputs (images, audio, animated video...)."""
    found = []
    for ui in outputs.values():
        for value in ui.values():
            if isinstance(value, list):
                found += [v for v in value if isinstance(v, dict) and "filename" in v]
    return found


@dataclass
class DemoRun:
    video: pathlib.Path
    workflow: pathlib.Path
    server_start_s: float
    workflow_s: float              # queueing the prompt -> mp4 written
    total_s: float                 # server start + workflow + reading the result
    media: dict = field(default_factory=dict)


def run_demo(workflow: pathlib.Path, base: pathlib.Path, weights: dict[str, pathlib.Path] | None = None) -> DemoRun:
    prepare_base(base, DEMO_INPUTS)
    prompt = json.loads(workflow.read_text())
    t0 = time.monotonic()
    with linked_weights(base, weights), ComfyServer(base) as server:
        print(f"[demo] ComfyUI up at {server.url} in {server.start_seconds:.1f} s; queueing {workflow.name}")
        t1 = time.monotonic()
        result = ComfyClient(server.url).run(prompt, timeout=3600)
        t_workflow = time.monotonic() - t1
        if result.status != "success":
            err = result.error or {}
            sys.exit(f"[demo] workflow failed in node {err.get('node_id')} ({err.get('node_type')}): "
                     f"{err.get('exception_message', 'see the server log')}\n{server.log_tail(30)}")
        start_s = server.start_seconds
    videos = [f for f in saved_files(result.outputs) if f["filename"].endswith(".mp4")]
    if not videos:
        sys.exit(f"[demo] the workflow produced no mp4; outputs: {result.outputs}")
    v = videos[0]
    path = base / "output" / v.get("subfolder", "") / v["filename"]
    info = media_duration(path)
    run = DemoRun(path, workflow, start_s, t_workflow, time.monotonic() - t0, info)
    print(f"[demo] done in {run.total_s:.1f} s (workflow {t_workflow:.1f} s): {info.get('frames')} frames at "
          f"{info.get('fps'):.2f} fps, video {info.get('video', 0):.2f} s, audio {info.get('audio', 0):.2f} s")
    print(path.resolve())
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", type=pathlib.Path, default=None,
                    help="API-format workflow (default: the IASA-mini talking video when its weights are bundled)")
    ap.add_argument("--base", type=pathlib.Path, default=REPO / ".iasa" / "comfy_home")
    ap.add_argument("--weights", type=pathlib.Path, default=None,
                    help="folder with iasa_mini_teacher.safetensors and iasa_mini_vae.safetensors to use instead "
                         "of the bundled ones (implies the talking workflow)")
    args = ap.parse_args()
    weights = weights_from_dir(args.weights)
    workflow = args.workflow or (talking_workflow_for(weights[TEACHER_FILE]) if weights else choose_workflow())
    run_demo(workflow, args.base, weights)


if __name__ == "__main__":
    main()
