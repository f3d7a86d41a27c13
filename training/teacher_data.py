"""Teacher training data: clip windows encoded once into normalised Wan 2.1 latents, laid out exactly as
stock ``WanFunControlToVideo`` + ``WAN21.concat_cond`` feed a 48-channel Wan model.

Per window of ``frames`` pixel frames (``1 + 4k``):
* ``x0``      = ``Wan21.process_in(vae.encode(frames))``                       ``[16, F, h, w]``
* ``control`` = ``Wan21.process_in(vae.encode(render_pose(keypoints)))``       ``[16, F, h, w]``
* ``ref``     = ``Wan21.process_in(vae.encode(one frame))``                    ``[16, 1, h, w]``
  (the window's first frame is ``x0[:, :1]`` exactly: the VAE is causal; ``ref_random`` holds the
  latent of a random frame of the same clip as an alternative reference).

Model input (``concat_cond`` order: noise first): ``[x_t (16) | control (16) | ref at latent frame 0,
zeros elsewhere (16)]``. The all-zero conditioning (what a ``WanFunControlToVideo`` without
control_video / start_image gives after ``process_in``) is the unconditional branch for CFG.

Pose videos are rendered on CPU worker processes (``pose/render.py``: numpy + cv2 only) while the GPU
encodes the previous batch.
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

from ..pose.keypoints import PoseSequence
from ..pose.render import render_pose
from .clips import to_model_range

log = logging.getLogger(__name__)
CACHE_FORMAT = "iasa-teacher-latents"
CACHE_VERSION = 1


@dataclass
class LatentSet:
    x0: torch.Tensor          # [N, 16, F, h, w] float32, normalised
    control: torch.Tensor     # [N, 16, F, h, w]
    ref_random: torch.Tensor  # [N, 16, 1, h, w]
    ids: list[str]

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def to(self, device) -> "LatentSet":
        return LatentSet(self.x0.to(device), self.control.to(device), self.ref_random.to(device), self.ids)


def concat_latent(control: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``[B, 32, F, h, w]``: control latent on channels 0:16, reference at latent frame 0 on 16:32."""
    ref_full = torch.zeros_like(control)
    ref_full[:, :, : ref.shape[2]] = ref[:, :, : control.shape[2]]
    return torch.cat([control, ref_full], dim=1)


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


def _render_job(job: tuple[np.ndarray, int, int]) -> np.ndarray:
    kp, width, height = job
    img = render_pose(PoseSequence(kp, width, height), width, height)
    return np.rint(img * 255.0).astype(np.uint8)  # exact: render_pose gives uint8 / 255


def _iter_rendered(jobs: list, workers: int):
    if workers <= 1 or len(jobs) < 2:
        for j in jobs:
            yield _render_job(j)
        return
    # fork: workers only run numpy/cv2 (like DataLoader workers, safe after CUDA init).
    with mp.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap(_render_job, jobs, chunksize=1)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


@torch.no_grad()
def encode_normalised(vae, px_uint8: torch.Tensor, amp: bool, latent_format) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> ``process_in(encode(.))`` float32 ``[B, 16, F, h, w]``."""
    x = to_model_range(px_uint8)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp and x.device.type == "cuda"):
        z = vae.encode(x)
    return latent_format.process_in(z.float())


def build_latent_set(clips: list[dict], vae, frames: int, stride: int, device: torch.device, batch: int = 4,
                     workers: int = 0, amp: bool = True, seed: int = 0, max_per_clip: int = 0) -> LatentSet:
    """Render, encode and normalise every window of ``clips`` (dicts with frames, keypoints, id)."""
    from .vae_train import wan21_latent_format

    fmt = wan21_latent_format()
    workers = workers or max(1, (os.cpu_count() or 2) - 1)
    windows = plan_windows([len(c["frames"]) for c in clips], frames, stride, max_per_clip)
    if not windows:
        raise ValueError(f"no clip has {frames} frames; use a shorter --frames")
    rng = np.random.default_rng(seed)
    h, w = clips[0]["frames"].shape[1:3]
    jobs = [(clips[c]["keypoints"][s:s + frames], w, h) for c, s in windows]
    rand_frame = [int(rng.integers(0, len(clips[c]["frames"]))) for c, _ in windows]
    x0s, ctrls, refs = [], [], []
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
        pose = torch.from_numpy(np.stack(pending)).to(device)
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
    out = LatentSet(torch.cat(x0s), torch.cat(ctrls), torch.cat(refs),
                    [f"{clips[c].get('id', c)}@{s}" for c, s in windows])
    log.info("teacher data: %d windows of %d frames -> latents %s in %.1f s (%d render workers)",
             len(out), frames, tuple(out.x0.shape[1:]), time.perf_counter() - t0, workers)
    return out


def save_latent_set(ls: LatentSet, path: str | Path, info: dict) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "ids": ls.ids, **info}
    save_file({"x0": ls.x0.cpu().contiguous(), "control": ls.control.cpu().contiguous(),
               "ref_random": ls.ref_random.cpu().contiguous()}, str(tmp), metadata={"iasa": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def load_latent_set(path: str | Path) -> tuple[LatentSet, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("iasa", "{}"))
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise ValueError(f"{path} is not a teacher latent cache v{CACHE_VERSION}; delete it to rebuild")
        t = {k: f.get_tensor(k) for k in ("x0", "control", "ref_random")}
    return LatentSet(t["x0"], t["control"], t["ref_random"], meta["ids"]), meta
