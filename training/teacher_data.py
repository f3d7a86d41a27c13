"""Teacher training data: clip windows encoded once into normalised Wan 2.1 latents, laid out exactly as
stock ``Wan22FunControlToVideo`` + ``WAN21`` feed a 48-channel Wan model with ``ref_conv``.

Per window of ``frames`` pixel frames (``1 + 4k``):
* ``x0``      = ``Wan21.process_in(vae.encode(frames))``                       ``[16, F, h, w]``
* ``control`` = ``Wan21.process_in(vae.encode(render_pose(keypoints)))``       ``[16, F, h, w]``
* ``ref_random`` = ``Wan21.process_in(vae.encode(one random frame of the clip))`` ``[16, 1, h, w]``
  (the window's own first frame is ``x0[:, :1]`` exactly: the VAE is causal);
* ``labels`` / ``frame_select``: the input-aware attention pattern of the window's pose (region label per
  video token, frame pairs kept by paper Eq. 1-2), the mask the sparse teacher trains with.

*Continuation windows* (``continuation_per_clip``): latent frames ``j .. j+F-1`` (``j >= 1``) sliced out of
one encode of the whole clip, for ``x0`` and ``control`` alike, with the clip's pattern at those latent frames
(``pose_pattern(..., latent_frames)``). A window encoded on its own starts with a key latent (its first frame
coded like an image); every window after the first of IASA Long Video starts mid-clip instead, on latents that
continue the clip's one encode. Training on both kinds is what lets the teacher generate the later windows of a
long video from the inputs it gets there. Their ids end in ``@L<j>`` (latent offset).

Model input (``concat_cond`` order: noise first): ``[x_t (16) | control (16) | zeros (16)]`` (the start-image
channels that Wan22FunControlToVideo leaves empty) and the reference as ``reference_latent`` ``[B, 16, h, w]``,
which ``ref_conv`` turns into ``h/2 * w/2`` tokens in front of the video. The unconditional branch for CFG
is what a ``Wan22FunControlToVideo`` without control_video / ref_image gives: zero concat, no reference.

Pose videos and patterns are computed on CPU worker processes (``pose/render.py``, ``attention/``: numpy +
cv2 only) while the GPU encodes the previous batch.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..attention.grid import TokenGrid
from ..attention.pose_layout import SparseAttentionConfig, pose_pattern
from ..pose.keypoints import PoseSequence
from ..pose.render import render_pose
from .clips import to_model_range
from .tiny_vae import latent_frames, pixel_frames
from .vae_parallel import encode_parallel

log = logging.getLogger(__name__)
CACHE_FORMAT = "iasa-teacher-latents"
CACHE_VERSION = 2


@dataclass
class LatentSet:
    x0: torch.Tensor          # [N, 16, F, h, w] float32, normalised
    control: torch.Tensor     # [N, 16, F, h, w]
    ref_random: torch.Tensor  # [N, 16, 1, h, w]
    labels: torch.Tensor      # uint8 [N, F, h/2, w/2] region label per video token
    frame_select: torch.Tensor  # bool [N, F, F]
    ids: list[str]

    TENSORS = ("x0", "control", "ref_random", "labels", "frame_select")

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def to(self, device) -> "LatentSet":
        return LatentSet(*(getattr(self, k).to(device) for k in self.TENSORS), self.ids)


def concat_latent(control: torch.Tensor) -> torch.Tensor:
    """``[B, 32, F, h, w]``: control latent on channels 0:16, the empty start-image channels on 16:32."""
    return torch.cat([control, torch.zeros_like(control)], dim=1)


def token_grid(latent_thw: tuple[int, int, int], ref_tokens: bool = True) -> TokenGrid:
    """Token grid of an IASA-mini call: patch (1, 2, 2), 16-px tokens, ``ref_conv`` tokens in front."""
    f, h, w = latent_thw
    return TokenGrid.from_latent_shape((f, h, w), (1, 2, 2), 8, ref_tokens_before=(h // 2) * (w // 2) if ref_tokens else 0)


def model_input(x_t: torch.Tensor, concat: torch.Tensor) -> torch.Tensor:
    """What ``BaseModel._apply_model`` builds: ``cat([x_t, c_concat], dim=1)``."""
    return torch.cat([x_t, concat.to(x_t.dtype)], dim=1)


def plan_windows(lengths: list[int], frames: int, stride: int, max_per_clip: int = 0) -> list[tuple[int, int]]:
    """``(clip, start)`` pairs of non-overlapping (``stride >= frames``) or overlapping windows."""
    out = []
    for c, n in enumerate(lengths):
        starts = list(range(0, n - frames + 1, max(1, stride)))
        if max_per_clip:
            starts = starts[:max_per_clip]
        out.extend((c, s) for s in starts)
    return out


def _render_job(job: tuple[np.ndarray, int, int, SparseAttentionConfig]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pose video (uint8) and attention pattern (labels, frame_select) of one window."""
    kp, width, height, config = job
    pose = PoseSequence(kp, width, height)
    img = render_pose(pose, width, height)
    grid = token_grid(((len(kp) - 1) // 4 + 1, height // 8, width // 8))
    labels, select, _ = pose_pattern(pose, grid, config)
    return np.rint(img * 255.0).astype(np.uint8), labels, select  # exact: render_pose gives uint8 / 255


def _render_clip_job(job: tuple[np.ndarray, int, int, SparseAttentionConfig, int, list[int], int]):
    """Pose video of a clip's first ``frames`` frames and the pattern of each continuation window (latent offsets),
    fitted to the whole clip as IASA Sparse Attention fits it under IASA Long Video."""
    kp, width, height, config, window_latents, offsets, frames = job
    pose = PoseSequence(kp, width, height)
    img = render_pose(PoseSequence(kp[:frames], width, height), width, height)
    grid = token_grid((window_latents, height // 8, width // 8))
    patterns = []
    for j in offsets:
        labels, select, _ = pose_pattern(pose, grid, config, latent_frames=list(range(j, j + window_latents)))
        patterns.append((labels, select))
    return np.rint(img * 255.0).astype(np.uint8), patterns


def _iter_rendered(jobs: list, workers: int, fn=_render_job):
    if workers <= 1 or len(jobs) < 2:
        for j in jobs:
            yield fn(j)
        return
    # fork: workers only run numpy/cv2 (like DataLoader workers, safe after CUDA init).
    with mp.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap(fn, jobs, chunksize=1)


def plan_continuation(lengths: list[int], frames: int, per_clip: int, rng: np.random.Generator) -> list[tuple[int, list[int]]]:
    """``(clip, latent offsets)``: up to ``per_clip`` distinct offsets ``j >= 1`` per clip long enough for a window
    of ``frames`` pixel frames to start one latent frame or more into the clip's one encode."""
    f_lat = latent_frames(frames)
    out = []
    for c, n in enumerate(lengths):
        choices = np.arange(1, latent_frames(n) - f_lat + 1)
        if per_clip <= 0 or not len(choices):
            continue
        picked = rng.choice(choices, size=min(per_clip, len(choices)), replace=False)
        out.append((c, sorted(int(j) for j in picked)))
    return out


def build_continuation_set(clips: list[dict], vae, frames: int, per_clip: int, device: torch.device,
                           workers: int = 0, amp: bool = True, seed: int = 0,
                           pattern: SparseAttentionConfig = SparseAttentionConfig()) -> LatentSet | None:
    """Continuation windows (module docstring) of ``clips``: each clip encoded once in one pass; None if no clip
    is long enough."""
    from .vae_train import wan21_latent_format

    fmt = wan21_latent_format()
    rng = np.random.default_rng(seed + 1)
    plan = plan_continuation([len(c["frames"]) for c in clips], frames, per_clip, rng)
    if not plan:
        return None
    f_lat = latent_frames(frames)
    usable = {c: pixel_frames(max(offs) + f_lat) for c, offs in plan}   # pixel frames encoded per clip
    h, w = clips[0]["frames"].shape[1:3]
    jobs = [(clips[c]["keypoints"], w, h, pattern, f_lat, offs, usable[c]) for c, offs in plan]
    workers = workers or max(1, (os.cpu_count() or 2) - 1)
    x0s, ctrls, refs, labels, selects, ids = [], [], [], [], [], []
    t0 = time.perf_counter()
    vae.eval()
    for (c, offs), (pose_img, patterns) in zip(plan, _iter_rendered(jobs, workers, _render_clip_job)):
        n = usable[c]
        px = torch.from_numpy(clips[c]["frames"][None, :n]).to(device)
        x0 = encode_normalised(vae, px, amp, fmt)
        ctrl = encode_normalised(vae, torch.from_numpy(pose_img[None]).to(device), amp, fmt)
        for j, (lab, sel) in zip(offs, patterns):
            x0s.append(x0[:, :, j:j + f_lat])
            ctrls.append(ctrl[:, :, j:j + f_lat])
            single = clips[c]["frames"][int(rng.integers(0, len(clips[c]["frames"])))][None, None]
            refs.append(encode_normalised(vae, torch.from_numpy(single).to(device), amp, fmt))
            labels.append(torch.from_numpy(lab))
            selects.append(torch.from_numpy(sel))
            ids.append(f"{clips[c].get('id', c)}@L{j}")
    out = LatentSet(torch.cat(x0s), torch.cat(ctrls), torch.cat(refs), torch.stack(labels).to(device),
                    torch.stack(selects).to(device), ids)
    log.info("teacher data: %d continuation windows of %d latent frames from %d clips in %.1f s",
             len(out), f_lat, len(plan), time.perf_counter() - t0)
    return out


def join_latent_sets(a: LatentSet, b: LatentSet | None) -> LatentSet:
    if b is None:
        return a
    return LatentSet(*(torch.cat([getattr(a, k), getattr(b, k).to(getattr(a, k).device)]) for k in LatentSet.TENSORS),
                     a.ids + b.ids)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


@torch.no_grad()
def encode_normalised(vae, px_uint8: torch.Tensor, amp: bool, latent_format) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> ``process_in(encode(.))`` float32 ``[B, 16, F, h, w]``."""
    x = to_model_range(px_uint8)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp and x.device.type == "cuda"):
        z = encode_parallel(vae, x)  # equal to vae.encode(x), one pass over the window
    return latent_format.process_in(z.float())


def build_latent_set(clips: list[dict], vae, frames: int, stride: int, device: torch.device, batch: int = 4,
                     workers: int = 0, amp: bool = True, seed: int = 0, max_per_clip: int = 0,
                     pattern: SparseAttentionConfig = SparseAttentionConfig()) -> LatentSet:
    """Render, encode and normalise every window of ``clips`` (dicts with frames, keypoints, id); compute
    each window's attention ``pattern``."""
    from .vae_train import wan21_latent_format

    fmt = wan21_latent_format()
    workers = workers or max(1, (os.cpu_count() or 2) - 1)
    windows = plan_windows([len(c["frames"]) for c in clips], frames, stride, max_per_clip)
    if not windows:
        raise ValueError(f"no clip has {frames} frames; use a shorter --frames")
    rng = np.random.default_rng(seed)
    h, w = clips[0]["frames"].shape[1:3]
    jobs = [(clips[c]["keypoints"][s:s + frames], w, h, pattern) for c, s in windows]
    rand_frame = [int(rng.integers(0, len(clips[c]["frames"]))) for c, _ in windows]
    x0s, ctrls, refs, labels, selects = [], [], [], [], []
    t0 = time.perf_counter()
    vae.eval()
    pending: list[np.ndarray] = []
    done = 0

    def flush() -> None:
        nonlocal done
        sel = range(done, done + len(pending))
        px = torch.from_numpy(np.stack([clips[windows[i][0]]["frames"][windows[i][1]:windows[i][1] + frames]
                                        for i in sel])).to(device)
        single = torch.from_numpy(np.stack([clips[windows[i][0]]["frames"][rand_frame[i]][None] for i in sel])).to(device)
        pose = torch.from_numpy(np.stack([p[0] for p in pending])).to(device)
        labels.extend(torch.from_numpy(p[1]) for p in pending)
        selects.extend(torch.from_numpy(p[2]) for p in pending)
        x0s.append(encode_normalised(vae, px, amp, fmt))
        ctrls.append(encode_normalised(vae, pose, amp, fmt))
        refs.append(encode_normalised(vae, single, amp, fmt))
        done += len(pending)
        pending.clear()

    for img in _iter_rendered(jobs, workers):
        pending.append(img)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    out = LatentSet(torch.cat(x0s), torch.cat(ctrls), torch.cat(refs), torch.stack(labels).to(device),
                    torch.stack(selects).to(device), [f"{clips[c].get('id', c)}@{s}" for c, s in windows])
    log.info("teacher data: %d windows of %d frames -> latents %s in %.1f s (%d render workers)",
             len(out), frames, tuple(out.x0.shape[1:]), time.perf_counter() - t0, workers)
    return out


def save_latent_set(ls: LatentSet, path: str | Path, info: dict) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "ids": ls.ids, **info}
    save_file({k: getattr(ls, k).cpu().contiguous() for k in LatentSet.TENSORS}, str(tmp),
              metadata={"iasa": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def _cache_meta(f, path) -> dict:
    meta = json.loads((f.metadata() or {}).get("iasa", "{}"))
    if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
        raise ValueError(f"{path} is not a teacher latent cache v{CACHE_VERSION}; delete it to rebuild")
    return meta


def latent_cache_meta(path: str | Path) -> dict | None:
    """The settings a latent cache was made with (header only), None if there is no usable cache."""
    from safetensors import safe_open

    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return _cache_meta(f, path)
    except ValueError:
        return None


def load_latent_set(path: str | Path) -> tuple[LatentSet, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = _cache_meta(f, path)
        t = [f.get_tensor(k) for k in LatentSet.TENSORS]
    return LatentSet(*t, meta["ids"]), meta
