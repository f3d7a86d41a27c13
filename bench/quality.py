"""IASA-mini quality on held-out synthetic clips, measured through what users run.

    python iasa_cli.py bench.quality [--data .dev/synth/shards] [--clips 8] [--frames 0 [97 169 ...]]
        [--steps 20 [10 ...]] [--cfg 3.0 [...]] [--attention sparse dense] [--workflow workflows/api/X.json]
        [--teacher models/diffusion_models/iasa_mini_teacher.safetensors]
        [--vae models/vae/iasa_mini_vae.safetensors] [--student S.safetensors [...]]
        [--student-steps 4 [3 ...]]
        [--student-workflow workflows/api/iasa_mini_student.json] [--out bench/results/quality.json]

Teacher records: for each of ``--clips`` held-out clips (spread over the held-out split), the talking
workflow (``--workflow``, default ``workflows/api/iasa_mini_talking_v2.json``) is posted to a real headless ComfyUI with the clip's own
first frame as the reference image and the clip's own pose sequence (a pose JSON through IASA Load Pose)
instead of the audio-driven one; everything else (stock UNETLoader / VAELoader, WanFunControlToVideo with
the zero-concat negative, ModelSamplingSD3, KSampler) is the workflow's. The decoded frames (SaveImage,
PNG) are compared with the clip's frames. ``--steps`` / ``--cfg`` override the workflow's KSampler.
VAE record (``model = "vae"``): the same frames encoded and decoded by ComfyUI's stock VAE class (what
VAELoader builds), in this process, quantised as SaveImage does. Tiny-autoencoder record (``model =
"tiny_vae"``, ``--tiny-vae``, default the bundled ``models/vae/iasa_mini_tiny_vae.safetensors`` when present):
the same through the tiny autoencoder, plus ``psnr_vs_full_vae`` (its decode of the full VAE's latents
against the full VAE's decode: held-out PSNR against the full VAE).

Student records (``--student``, one per file, named by its stem): the student workflow (IASA Student Sampler, the
card's steps, cfg 1) driven the same way, the file given to its UNETLoader; the same ``--attention`` modes.

``--weight-dtype fp8_e4m3fn_fast`` loads every teacher / student as UNETLoader's fp8 option does; with
``--fp8-matmul-on-cpu`` the server also takes ComfyUI's fp8 matmul path (fp8 activations x fp8 weights, what a
GPU with fp8 compute runs), the kernel's product computed in float32 by a bench-only plugin
(``bench/comfy_plugins/iasa_bench_cpu_fp8_matmul``): the quality side of bench.realtime's ``student_fp8``.

Baseline record (``model = "reference_copy"``): the reference picture copied to every frame, the score a
model that ignores the pose gets. Teacher records come once per ``--attention`` mode: the workflow as it is
(IASA Sparse Attention on) and/or with that node bypassed (dense).

Numbers per record (means over clips): psnr, ssim (RGB), psnr_face / psnr_mouth (lips) / psnr_hands inside
the shards' region masks, psnr_moved (where the pose moved since frame 0: pixels that entered or left a body
region), psnr_per_second (per second of video, mean over clips) and psnr_last_minus_first_second (drift over
a long clip), psnr_worst_frame (the lowest single frame over all clips, not a mean), mouth_audio_corr (bench/video_metrics.py: correlation of the mouth region's change
from the first frame with the per-frame speech energy; ``mouth_audio_corr_ground_truth`` is the same on the
real frames, for scale), sharpness / sharpness_face_hands (the generated frames' mean luma gradient over the real
frames', over the frame and inside face and hands: 1 is as detailed as the truth, a blurred mean scores below 1
where PSNR would reward it). ``--frames 0`` takes the teacher's training window from its model card (33 or 49
frames: the length it was trained on, and affordable on a CPU), ``--frames -1`` whole clips; lengths are
cut to 4k + 1 frames (Wan's temporal compression).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

from ..harness.client import ComfyClient
from ..harness.demo import STUDENT_WORKFLOW, TEACHER_FILE, VAE_FILE, bundled_weights, linked_weights, saved_files
from ..harness.server import REPO, ComfyServer, prepare_base
from ..pose.keypoints import PoseSequence, to_pose_keypoint
from ..pose.pose_files import write_pose_file
from ..training.tiny_vae import VAE_FILE as TINY_VAE_FILE
from . import run_info
from .video_metrics import clip_scores, mean_scores, mouth_audio_corr

log = logging.getLogger(__name__)
RESULTS = REPO / "bench" / "results" / "quality.json"
WORKFLOW = REPO / "workflows" / "api" / "iasa_mini_talking_v2.json"
TINY_VAE = REPO / "models" / "vae" / TINY_VAE_FILE
SCORE_KEYS = ("psnr", "ssim", "psnr_face", "psnr_mouth", "psnr_hands", "psnr_moved", "mouth_audio_corr",
              "psnr_last_minus_first_second", "sharpness", "sharpness_face_hands")
FUN_CONTROL_NODES = ("WanFunControlToVideo", "Wan22FunControlToVideo")
DECODE_NODES = ("VAEDecode", "IASALongVAEDecode")   # the frames saved are what one of these decodes
SAMPLER_NODES = ("KSampler", "IASAStudentSampler")   # the teacher's (steps, cfg) and the student's (steps, cfg 1)
ATTENTION_MODES = ("sparse", "dense")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")     # stock UNETLoader's weight_dtype
CPU_FP8_PLUGIN = pathlib.Path(__file__).parent / "comfy_plugins" / "iasa_bench_cpu_fp8_matmul"
FP8_FIRST_CALL = "iasa_bench_cpu_fp8_matmul: first fp8 matmul on the CPU"   # the plugin's log line (its FIRST_CALL)
INPUT_SUBDIR = "iasa_quality"


# ------------------------------------------------------------------------------------------- clips
def wan_length(n: int) -> int:
    """Largest 4k + 1 <= n."""
    if n < 1:
        raise ValueError(f"need at least 1 frame, got {n}")
    return 4 * ((n - 1) // 4) + 1


def pick_clips(data: str | pathlib.Path, count: int, frames: int) -> list[dict]:
    """``count`` held-out clips spread evenly over the split (clips shorter than ``frames`` skipped;
    ``frames <= 0``: any length), each cut to ``wan_length(min(len, frames))`` frames."""
    from ..training.synth.shards import iter_shard, shard_index, shard_paths

    index = [(path, i, m) for path in shard_paths(data) for i, m in enumerate(shard_index(path))
             if m.get("split") != "train" and (frames <= 0 or m["n_frames"] >= frames)]
    if not index:
        raise ValueError(f"--data {data}: no held-out clip with at least {frames} frames")
    pick = sorted({int(round(x)) for x in np.linspace(0, len(index) - 1, min(count, len(index)))})
    wanted: dict[pathlib.Path, set[int]] = {}
    for k in pick:
        wanted.setdefault(index[k][0], set()).add(index[k][1])
    clips = []
    for path, ids in wanted.items():
        for i, clip in enumerate(iter_shard(path, keys=("frames", "keypoints", "masks", "energy"))):
            if i in ids:
                n = wan_length(len(clip["frames"]) if frames <= 0 else min(frames, len(clip["frames"])))
                clips.append({"id": clip["id"], "frames": clip["frames"][:n], "keypoints": clip["keypoints"][:n],
                              "masks": {k: v[:n] for k, v in clip["masks"].items()}, "energy": clip["energy"][:n],
                              "width": clip["width"], "height": clip["height"]})
    return clips


# ---------------------------------------------------------------------------------------- workflow
def _node(workflow: dict, class_type: str, count: int = 1) -> list[str]:
    ids = sorted((k for k, v in workflow.items() if v["class_type"] == class_type), key=int)
    if len(ids) != count:
        raise ValueError(f"{WORKFLOW.name}: expected {count} {class_type} node(s), found {len(ids)}; "
                         "bench/quality.py derives its prompt from that workflow's layout")
    return ids


def _ids(workflow: dict, class_types: tuple[str, ...]) -> list[str]:
    return sorted((k for k, v in workflow.items() if v["class_type"] in class_types), key=int)


def _sampler(workflow: dict) -> str:
    ids = _ids(workflow, SAMPLER_NODES)
    if len(ids) != 1:
        raise ValueError(f"expected one sampler node ({' or '.join(SAMPLER_NODES)}), found {ids}; bench/quality.py "
                         "sets its steps (and a KSampler's cfg)")
    return ids[0]


def sampler_settings(workflow: dict, model: pathlib.Path) -> dict:
    """Steps, cfg and sampler of the workflow's sampler node as it runs ``model``: IASA Student Sampler's
    ``steps`` 0 means the student card's, and it samples at cfg 1."""
    node = workflow[_sampler(workflow)]
    if node["class_type"] == "IASAStudentSampler":
        from ..training.distill.export import read_card

        return {"steps": node["inputs"]["steps"] or read_card(model)["student"]["steps"], "cfg": 1.0,
                "sampler": node["class_type"]}
    return {"steps": node["inputs"]["steps"], "cfg": node["inputs"]["cfg"], "sampler": node["inputs"]["sampler_name"]}


def _rewire(wf: dict, old: list, new: list) -> None:
    """Every input that reads output ``old`` ([node, slot]) reads ``new`` instead."""
    for node in wf.values():
        for name, value in node["inputs"].items():
            if value == old:
                node["inputs"][name] = list(new)


def quality_prompt(workflow: dict, ref_image: str, pose_file: str, prefix: str,
                   steps: int | None = None, cfg: float | None = None, attention: str = "sparse",
                   weight_dtype: str | None = None) -> dict:
    """The talking workflow driven by a given pose sequence and reference frame, saving PNG frames:
    the audio branch, IASA Audio To Pose and the mp4 nodes are dropped (whatever read the audio-driven
    pose reads the pose file instead); the pose file's frame count is the video length. ``attention =
    "dense"`` bypasses IASA Sparse Attention (its consumers read the model it patched); ``weight_dtype`` is
    UNETLoader's (e.g. ``fp8_e4m3fn_fast``; None keeps the workflow's)."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention: {attention!r} is not one of {ATTENTION_MODES}")
    wf = json.loads(json.dumps(workflow))
    (load_image,) = _node(wf, "LoadImage")
    (load_pose,) = _node(wf, "IASALoadPose")
    (audio_pose,) = _node(wf, "IASAAudioToPose")
    sampler = _sampler(wf)
    decode = _ids(wf, DECODE_NODES)
    if len(decode) != 1:
        raise ValueError(f"expected one decode node ({DECODE_NODES}) in the workflow, found {len(decode)}")
    decode = decode[0]
    fun = _ids(wf, FUN_CONTROL_NODES)
    if not fun:   # the teacher's workflow has two (positive; zero-concat negative), the student's one
        raise ValueError(f"expected a Fun-Control conditioning node ({FUN_CONTROL_NODES}) in the workflow, found none")
    _rewire(wf, [audio_pose, 0], [load_pose, 0])
    if attention == "dense":
        for nid in _ids(wf, ("IASASparseAttention",)):
            _rewire(wf, [nid, 0], wf[nid]["inputs"]["model"])
            del wf[nid]
    drop = set(_node(wf, "IASALoadAudio") + _node(wf, "IASAAudioFeatures") + [audio_pose]
               + _node(wf, "CreateVideo") + _node(wf, "SaveVideo"))
    for nid in drop:
        del wf[nid]
    wf[load_image]["inputs"]["image"] = ref_image
    wf[load_pose]["inputs"]["pose_file"] = pose_file
    for nid in fun:
        wf[nid]["inputs"]["length"] = [load_pose, 1]
    if steps is not None:
        wf[sampler]["inputs"]["steps"] = int(steps)
    if cfg is not None:
        if wf[sampler]["class_type"] != "KSampler":
            raise ValueError(f"cfg {cfg}: {wf[sampler]['class_type']} samples at cfg 1 (a student has no CFG)")
        wf[sampler]["inputs"]["cfg"] = float(cfg)
    if weight_dtype is not None:
        for nid in _node(wf, "UNETLoader"):
            wf[nid]["inputs"]["weight_dtype"] = weight_dtype
    wf["9000"] = {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": prefix}}
    for nid, node in wf.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in wf:
                raise ValueError(f"quality_prompt: node {nid}.{name} still reads dropped node {value[0]}")
    return wf


def repo_path(path: pathlib.Path) -> str:
    """``path`` relative to the repository when it lies inside it (results name the repo's workflows that way),
    else absolute (a workflow kept elsewhere)."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def write_clip_inputs(clip: dict, input_dir: pathlib.Path) -> tuple[str, str]:
    """The clip's first frame (PNG) and pose sequence (JSON) in ComfyUI's input folder."""
    from PIL import Image

    sub = input_dir / INPUT_SUBDIR
    sub.mkdir(parents=True, exist_ok=True)
    ref, pose = f"{clip['id']}_ref.png", f"{clip['id']}_pose.json"
    Image.fromarray(clip["frames"][0]).save(sub / ref)
    write_pose_file(sub / pose, to_pose_keypoint(PoseSequence(clip["keypoints"], clip["width"], clip["height"])))
    return f"{INPUT_SUBDIR}/{ref}", f"{INPUT_SUBDIR}/{pose}"


def read_frames(client: ComfyClient, outputs: dict) -> np.ndarray:
    import io

    from PIL import Image

    files = [f for f in saved_files(outputs) if f["filename"].endswith(".png")]
    if not files:
        raise RuntimeError(f"the quality prompt saved no frames: {outputs}")
    return np.stack([np.asarray(Image.open(io.BytesIO(client.view(f["filename"], f.get("subfolder", ""))))
                     .convert("RGB")) for f in files])


# ------------------------------------------------------------------------------------------ records
def sampled_records(clips: list[dict], model: pathlib.Path, vae: pathlib.Path, steps_list: list[int | None],
                    cfg_list: list[float | None], base: pathlib.Path, workflow_path: pathlib.Path = WORKFLOW,
                    attention_modes: tuple[str, ...] = ("sparse",), weight_dtype: str | None = None,
                    fp8_matmul_on_cpu: bool = False) -> list[dict]:
    """Records of one diffusion model (a teacher through KSampler, or a student through IASA Student Sampler):
    ``model`` is linked into the models folder under the name the workflow's UNETLoader asks for, which loads it
    as ``weight_dtype`` (None: the workflow's). ``fp8_matmul_on_cpu``: the server runs ComfyUI's fp8 matmul path
    (``--supports-fp8-compute``) with :data:`CPU_FP8_PLUGIN` standing in for the GPU kernel."""
    workflow = json.loads(workflow_path.read_text())
    settings = sampler_settings(workflow, model)
    (unet,) = _node(workflow, "UNETLoader")
    has_sparse = bool(_ids(workflow, ("IASASparseAttention",)))
    modes = [m for m in attention_modes if has_sparse or m == "dense"] or ["dense"]
    prepare_base(base)
    server_args = ()
    if fp8_matmul_on_cpu:
        plugin = base / "custom_nodes" / CPU_FP8_PLUGIN.name
        if not plugin.exists():
            plugin.symlink_to(CPU_FP8_PLUGIN, target_is_directory=True)
        server_args = ("--supports-fp8-compute",)
    names = [write_clip_inputs(c, base / "input") for c in clips]
    records = []
    weights = {workflow[unet]["inputs"]["unet_name"]: model, VAE_FILE: vae}
    with linked_weights(base, weights), ComfyServer(base, extra_args=server_args) as server:
        client = ComfyClient(server.url)
        for attention in modes:
            for steps in steps_list:
                for cfg in cfg_list:
                    steps_v = steps if steps is not None else settings["steps"]
                    cfg_v = cfg if cfg is not None else settings["cfg"]
                    per_clip, seconds = [], []
                    for clip, (ref, pose) in zip(clips, names):
                        prefix = f"{INPUT_SUBDIR}/{model.stem}_{clip['id']}_{len(clip['frames'])}_{attention}_s{steps_v}_c{cfg_v}"
                        prompt = quality_prompt(workflow, ref, pose, prefix, steps, cfg, attention, weight_dtype)
                        t0 = time.monotonic()
                        result = client.run(prompt, timeout=3600)
                        seconds.append(time.monotonic() - t0)
                        if result.status != "success":
                            raise RuntimeError(f"clip {clip['id']}: {result.error}\n{server.log_tail(30)}")
                        gen = read_frames(client, result.outputs)
                        per_clip.append(_clip_entry(clip, gen, seconds[-1]))
                        log.info("%s %s steps %s cfg %s clip %s: %s", model.stem, attention, steps_v, cfg_v, clip["id"],
                                 per_clip[-1])
                    if fp8_matmul_on_cpu and FP8_FIRST_CALL not in server.log_path.read_text(errors="replace"):
                        raise RuntimeError(f"--fp8-matmul-on-cpu: ComfyUI never ran its fp8 matmul for {model.name} "
                                           f"(no '{FP8_FIRST_CALL}' in {server.log_path}); the records would be "
                                           f"the fp8 weights alone")
                    records.append(_record(model.stem, per_clip, clips, attention=attention if has_sparse else
                                           "dense (the workflow has no IASA Sparse Attention)",
                                           steps=steps_v, cfg=cfg_v, sampler=settings["sampler"],
                                           weight_dtype=weight_dtype or workflow[unet]["inputs"]["weight_dtype"],
                                           **({"fp8_matmul": "emulated on the CPU (bench/comfy_plugins)"}
                                              if fp8_matmul_on_cpu else {}),
                                           seconds_per_clip=round(float(np.mean(seconds)), 2)))
    return records


def _clip_entry(clip: dict, gen: np.ndarray, seconds: float) -> dict:
    n = len(gen)
    masks = {k: v[:n] for k, v in clip["masks"].items()}
    return {"id": clip["id"], "frames": n, "seconds": round(seconds, 2),
            **clip_scores(gen, clip["frames"][:n], masks, clip["energy"][:n])}


def reference_copy_record(clips: list[dict]) -> dict:
    """The baseline every model must beat: the reference picture (the clip's first frame, what the workflow
    is given) copied to every frame."""
    per_clip = [_clip_entry(c, np.repeat(c["frames"][:1], len(c["frames"]), axis=0), 0.0) for c in clips]
    return _record("reference_copy", per_clip, clips, steps=None, cfg=None, seconds_per_clip=0.0)


def stock_vae(path: pathlib.Path):
    """``comfy.sd.VAE`` of a weights file, as VAELoader builds it (a tiny autoencoder runs all frames at once:
    the same numbers as ComfyUI's frame-by-frame default, tests/unit/test_tiny_vae.py)."""
    from ..training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.sd
    import comfy.taesd.taehv
    import comfy.utils

    from ..training.tiny_vae import with_all_frames_at_once

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
    if isinstance(vae.first_stage_model, comfy.taesd.taehv.TAEHV):
        vae = with_all_frames_at_once(vae, True)
        vae.first_stage_model.show_progress_bar = False
    return vae


def _saved(images, n: int) -> np.ndarray:
    """ComfyUI IMAGE ``[1, T, H, W, 3]`` -> uint8 ``[n, H, W, 3]`` quantised as SaveImage does."""
    return np.clip(255.0 * images.reshape(-1, *images.shape[-3:])[:n].float().cpu().numpy(), 0, 255).astype(np.uint8)


def keyed_windows(workflow: dict) -> tuple[int, int] | None:
    """(window_frames, overlap_frames) of the workflow's IASA Keyed Windows node, None without one."""
    ids = _ids(workflow, ("IASAKeyedWindows",))
    if not ids:
        return None
    inputs = workflow[ids[0]]["inputs"]
    return int(inputs["window_frames"]), int(inputs["overlap_frames"])


def vae_records(clips: list[dict], vae_path: pathlib.Path, tiny_path: pathlib.Path | None = None,
                keyed: tuple[int, int] | None = None) -> list[dict]:
    """Reconstruction through ComfyUI's stock VAE class, SaveImage quantisation: the full VAE (``vae``), its
    decode in key-frame windows as IASA Long VAE Decode runs it (``vae_long_decode``, clips longer than one
    window only; its ``seconds_per_clip`` is the decode alone), with ``keyed`` (window and overlap frames of a
    workflow's IASA Keyed Windows) the round trip that node and the decode make (``vae_keyed``: each window encoded
    and decoded on its own, the overlaps cross-faded; clips longer than one window only) and, with ``tiny_path``, the tiny autoencoder (``tiny_vae``: its own encode + decode against the frames, plus
    ``psnr_vs_full_vae`` = its decode of the full VAE's latents against the full VAE's decode, what swapping
    the decoder in VAEDecode costs, and ``psnr_roundtrip_vs_full_vae``)."""
    import torch

    from .video_metrics import psnr

    from ..sampling.keyed_windows import KeyedWindowPlan, decode_windows, encode_windows
    from ..sampling.rekeyed_decode import DEFAULT_OVERLAP, DEFAULT_WINDOW, DecodeWindows, decode_rekeyed

    full = stock_vae(vae_path)
    tiny = stock_vae(tiny_path) if tiny_path else None
    windows = DecodeWindows(DEFAULT_WINDOW, DEFAULT_OVERLAP)
    names = ("vae", "vae_long_decode", "vae_keyed", "tiny_vae")
    per_clip: dict[str, list] = {k: [] for k in names}
    seconds: dict[str, list] = {k: [] for k in names}
    for clip in clips:
        n = len(clip["frames"])
        with torch.inference_mode():
            x = torch.from_numpy(clip["frames"]).float() / 255.0
            t0 = time.monotonic()
            lat = full.encode(x)
            rec = _saved(full.decode(lat), n)
            seconds["vae"].append(time.monotonic() - t0)
            per_clip["vae"].append(_clip_entry(clip, rec, seconds["vae"][-1]))
            if lat.shape[2] > windows.window:   # IASA Long VAE Decode differs from VAEDecode only past one window
                t0 = time.monotonic()
                long_rec = _saved(decode_rekeyed(lat, full.decode, full.encode, windows), n)
                seconds["vae_long_decode"].append(time.monotonic() - t0)
                per_clip["vae_long_decode"].append(_clip_entry(clip, long_rec, seconds["vae_long_decode"][-1]))
            plan = KeyedWindowPlan(n, *keyed) if keyed else None
            if plan is not None and len(plan) > 1:
                t0 = time.monotonic()
                keyed_rec = _saved(decode_windows(encode_windows(x, plan, full.encode), plan, full.decode), n)
                seconds["vae_keyed"].append(time.monotonic() - t0)
                per_clip["vae_keyed"].append(_clip_entry(clip, keyed_rec, seconds["vae_keyed"][-1]))
            if tiny is not None:
                t0 = time.monotonic()
                rt = _saved(tiny.decode(tiny.encode(x)), n)
                seconds["tiny_vae"].append(time.monotonic() - t0)
                entry = _clip_entry(clip, rt, seconds["tiny_vae"][-1])
                entry["psnr_vs_full_vae"] = psnr(_saved(tiny.decode(lat), n), rec)
                entry["psnr_roundtrip_vs_full_vae"] = psnr(rt, rec)
                per_clip["tiny_vae"].append(entry)
        log.info("vae clip %s: %s", clip["id"], per_clip["vae"][-1])
    out = []
    for name, path in (("vae", vae_path), ("vae_long_decode", vae_path), ("vae_keyed", vae_path), ("tiny_vae", tiny_path)):
        if per_clip[name]:
            rec = _record(name, per_clip[name], clips, steps=None, cfg=None,
                          seconds_per_clip=round(float(np.mean(seconds[name])), 2), weights=path.name)
            if name == "tiny_vae":
                rec.update(mean_scores(per_clip[name], ("psnr_vs_full_vae", "psnr_roundtrip_vs_full_vae")))
            out.append(rec)
    return out


def worst_frame(per_clip: list[dict]) -> float | None:
    """The lowest single-frame PSNR over all clips (the VAE aim: no frame below 28 dB); None without scores."""
    vals = [p["psnr_worst_frame"] for p in per_clip if np.isfinite(p["psnr_worst_frame"])]
    return round(min(vals), 4) if vals else None


def _record(model: str, per_clip: list[dict], clips: list[dict], **extra) -> dict:
    gt_corr = [mouth_audio_corr(c["frames"][: p["frames"]], c["masks"]["lips"][: p["frames"]], c["energy"])
               for c, p in zip(clips, per_clip)]
    seconds = max(len(p["psnr_per_second"]) for p in per_clip)
    per_second = [mean_scores([{"v": p["psnr_per_second"][i]} for p in per_clip if len(p["psnr_per_second"]) > i],
                              ("v",))["v"] for i in range(seconds)]
    return {"model": model, **extra, **mean_scores(per_clip, SCORE_KEYS), "psnr_per_second": per_second,
            "psnr_worst_frame": worst_frame(per_clip),
            "mouth_audio_corr_ground_truth": mean_scores([{"c": v} for v in gt_corr], ("c",))["c"],
            "clips": len(per_clip), "frames_per_clip": sorted({p["frames"] for p in per_clip}),
            "per_clip": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in p.items()} for p in per_clip]}


# ---------------------------------------------------------------------------------------------- main
def weights_info(path: pathlib.Path) -> dict:
    from ..training.distill.export import read_card
    from ..training.tiny_wan import file_sha256

    h = file_sha256(path)
    card = read_card(path)
    keep = ("name", "config", "training", "trained_steps", "heldout_psnr_db", "sampling", "eval", "data", "student")
    return {"file": path.name, "sha256": h, "card": {k: card[k] for k in keep if k in card}}


def main(argv: list[str] | None = None) -> dict:
    default = bundled_weights()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / ".dev" / "synth" / "shards"), help="shard dir with a held-out split")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, nargs="+", default=[0],
                    help="frames per clip, one record set per value: 0 = the teacher's training window, -1 = whole clips")
    ap.add_argument("--steps", type=int, nargs="+", default=[None], help="KSampler steps (default: the workflow's)")
    ap.add_argument("--cfg", type=float, nargs="+", default=[None], help="KSampler cfg (default: the workflow's)")
    ap.add_argument("--attention", nargs="+", choices=ATTENTION_MODES, default=["sparse"],
                    help="teacher with the workflow's IASA Sparse Attention and/or with it bypassed (dense)")
    ap.add_argument("--workflow", type=pathlib.Path, default=WORKFLOW, help="API workflow the teacher runs in")
    ap.add_argument("--teacher", type=pathlib.Path, default=default[TEACHER_FILE])
    ap.add_argument("--vae", type=pathlib.Path, default=default[VAE_FILE])
    ap.add_argument("--tiny-vae", default=str(TINY_VAE),
                    help="tiny autoencoder for the 'tiny_vae' record ('none': skip; default the bundled one if present)")
    ap.add_argument("--no-teacher", action="store_true", help="no teacher records (the VAE, reference-copy and any "
                                                                  "--student records only)")
    ap.add_argument("--no-vae", action="store_true", help="no VAE / tiny-autoencoder records (e.g. students only, "
                                                          "the VAE already measured on the same clips)")
    ap.add_argument("--student", type=pathlib.Path, nargs="+", default=[],
                    help="distilled students, one record set each (named by the file's stem)")
    ap.add_argument("--student-steps", type=int, nargs="+", default=[None],
                    help="IASA Student Sampler steps, one record set each (default: the card's; fewer sample a "
                         "subset of the trained timesteps)")
    ap.add_argument("--student-workflow", type=pathlib.Path, default=STUDENT_WORKFLOW,
                    help="API workflow the students run in (IASA Student Sampler)")
    ap.add_argument("--weight-dtype", default=None, choices=WEIGHT_DTYPES,
                    help="UNETLoader's weight_dtype for every teacher / student record (default: the workflow's)")
    ap.add_argument("--fp8-matmul-on-cpu", action="store_true",
                    help="with --weight-dtype fp8_e4m3fn_fast: run ComfyUI's fp8 matmul path on the CPU "
                         "(--supports-fp8-compute; the GPU kernel's product computed in float32), so the records show "
                         "what fp8 activations and weights do to the output")
    ap.add_argument("--base", type=pathlib.Path, default=None, help="ComfyUI base directory (default: a temporary one)")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for p in ([a.vae] if a.no_teacher else [a.teacher, a.vae]) + a.student:
        if not p.is_file():
            sys.exit(f"bench.quality: {p} not found; train IASA-mini (models/README.md) or pass --teacher / --vae / "
                     "--student")
    tiny = None if a.tiny_vae == "none" else pathlib.Path(a.tiny_vae)
    if tiny is not None and not tiny.is_file():
        if a.tiny_vae != str(TINY_VAE):
            sys.exit(f"bench.quality: --tiny-vae {tiny} not found")
        log.warning("bench.quality: no tiny autoencoder at %s (train it: training/tiny_vae_train.py); no tiny_vae record", tiny)
        tiny = None
    if a.fp8_matmul_on_cpu and a.weight_dtype != "fp8_e4m3fn_fast":
        sys.exit("bench.quality: --fp8-matmul-on-cpu needs --weight-dtype fp8_e4m3fn_fast (the loader option whose "
                 "linears multiply in fp8)")
    keyed = keyed_windows(json.loads(a.workflow.read_text()))
    t0 = time.monotonic()
    records = []
    for frames in a.frames:
        if frames == 0:
            from ..training.tiny_wan import read_weights

            frames = int(read_weights(a.teacher)[1].get("training", {}).get("frames", 33)) if not a.no_teacher else 33
        clips = pick_clips(a.data, a.clips, frames)
        log.info("bench.quality: %d held-out clips of %s frames", len(clips), sorted({len(c["frames"]) for c in clips}))
        group = [reference_copy_record(clips), *([] if a.no_vae else vae_records(clips, a.vae, tiny, keyed))]
        runs = ([] if a.no_teacher else [(a.teacher, a.workflow, a.steps, a.cfg)]) + \
            [(st, a.student_workflow, a.student_steps, [None]) for st in a.student]
        for model, workflow, steps, cfg in runs:
            with tempfile.TemporaryDirectory(prefix="iasa_quality_") as tmp:
                group += sampled_records(clips, model, a.vae, steps, cfg, a.base or pathlib.Path(tmp), workflow,
                                         tuple(a.attention), a.weight_dtype, a.fp8_matmul_on_cpu)
        records += [{"frames_setting": frames, **r} for r in group]
    result = {"command": "python iasa_cli.py bench.quality " + " ".join(sys.argv[1:] if argv is None else argv),
              "data": str(a.data), "frames": a.frames, "workflow": repo_path(a.workflow),
              "teacher": None if a.no_teacher else weights_info(a.teacher), "vae": weights_info(a.vae),
              "students": [weights_info(st) for st in a.student],
              "student_workflow": repo_path(a.student_workflow) if a.student else None,
              "tiny_vae": weights_info(tiny) if tiny else None,
              "records": records, "total_s": round(time.monotonic() - t0, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
              "versions": run_info.versions(()), "date": time.strftime("%Y-%m-%d")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps([{k: v for k, v in r.items() if k != "per_clip"} for r in records], indent=1))
    print("wrote", a.out)
    return result


if __name__ == "__main__":
    main()
