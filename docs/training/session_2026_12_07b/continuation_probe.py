"""Probe (CPU): does the shipped teacher generate worse when its window starts mid-clip, as IASA Long Video's later
windows do, than when the same frames come as a window of their own?

Per held-out clip and latent offset j, the frames s = 4j .. s + 48 are generated twice from the same noise:
  key:          pose frames s..s+48 encoded on their own (a key latent first), decoded on their own;
  continuation: latents j..j+12 of one encode of pose frames 0..s+48 (what a later long-video window gets),
                decoded in one pass after the real latents 0..j-1 of the clip's one encode (within the decoder's
                reach), the last 49 frames kept.
Each is scored against the real frames and against its own VAE ceiling (the real frames through the same
encode/decode path). Run: python docs/training/session_2026_12_07b/continuation_probe.py [clips] [offsets...]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import iasa_cli  # noqa: E402

iasa_cli.register_package()

from iasa.attention.pattern_mask import pattern_token_mask  # noqa: E402
from iasa.attention.pose_layout import SparseAttentionConfig, pose_pattern  # noqa: E402
from iasa.bench.quality import pick_clips  # noqa: E402
from iasa.pose.keypoints import PoseSequence  # noqa: E402
from iasa.pose.render import render_pose  # noqa: E402
from iasa.training.clips import to_model_range  # noqa: E402
from iasa.training.teacher_data import encode_normalised, token_grid  # noqa: E402
from iasa.training.teacher_train import sample  # noqa: E402
from iasa.training.tiny_wan import load_teacher, load_vae  # noqa: E402
from iasa.training.vae_train import psnr, wan21_latent_format  # noqa: E402

F_LAT, FRAMES = 13, 49


def model_file(rel: str) -> Path:
    """The bundled file, or its copy moved aside by scripts/device_tree.sh hide."""
    path = ROOT / rel
    return path if path.is_file() else ROOT / ".dev/hidden" / rel


def pose_video(kp, w, h):
    return torch.from_numpy(np.rint(render_pose(PoseSequence(kp, w, h), w, h) * 255).astype(np.uint8)[None])


@torch.no_grad()
def main(n_clips: int, offsets: list[int]) -> None:
    torch.set_num_threads(2)
    fmt = wan21_latent_format()
    vae, _ = load_vae(model_file("models/vae/iasa_mini_vae.safetensors"))
    teacher, _ = load_teacher(model_file("models/diffusion_models/iasa_mini_teacher.safetensors"))
    vae.eval(), teacher.eval()
    config = SparseAttentionConfig()
    clips = pick_clips(ROOT / ".dev/synth/shards", n_clips, 4 * max(offsets) + FRAMES)
    rows = []
    for clip in clips:
        h, w = clip["frames"].shape[1:3]
        grid = token_grid((F_LAT, h // 8, w // 8))
        full_pose = PoseSequence(clip["keypoints"], w, h)
        frames = torch.from_numpy(clip["frames"])
        key0 = encode_normalised(vae, frames[None, :1], False, fmt)            # the clip's own key latent
        ref = key0                                                              # [1, 16, 1, h, w]
        for j in offsets:
            s, t0 = 4 * j, time.perf_counter()
            gt = to_model_range(frames[None, s:s + FRAMES]).float()
            # key-start window
            k_x0 = encode_normalised(vae, frames[None, s:s + FRAMES], False, fmt)
            k_ctrl = encode_normalised(vae, pose_video(clip["keypoints"][s:s + FRAMES], w, h), False, fmt)
            lab, sel, _ = pose_pattern(PoseSequence(clip["keypoints"][s:s + FRAMES], w, h), grid, config)
            k_mask = pattern_token_mask(torch.from_numpy(lab)[None], torch.from_numpy(sel)[None],
                                        global_before=(h // 16) * (w // 16))
            # continuation window: latents j..j+12 of one encode of frames 0..s+48
            c_all = encode_normalised(vae, frames[None, :s + FRAMES], False, fmt)
            c_x0 = c_all[:, :, j:j + F_LAT]
            c_ctrl = encode_normalised(vae, pose_video(clip["keypoints"][:s + FRAMES], w, h), False, fmt)[:, :, j:j + F_LAT]
            lab, sel, _ = pose_pattern(full_pose, grid, config, latent_frames=list(range(j, j + F_LAT)))
            c_mask = pattern_token_mask(torch.from_numpy(lab)[None], torch.from_numpy(sel)[None],
                                        global_before=(h // 16) * (w // 16))
            g = torch.Generator().manual_seed(1234 + j)
            noise = torch.randn(k_x0.shape, generator=g)

            def dec_key(x0):
                return vae.decode(fmt.process_out(x0)).float()

            def dec_cont(x0):
                return vae.decode(fmt.process_out(torch.cat([c_all[:, :, :j], x0], dim=2))).float()[:, :, -FRAMES:]

            k_gen = sample(teacher, k_ctrl, ref, noise, 20, 3.0, 1.0, "none", k_mask)
            c_gen = sample(teacher, c_ctrl, ref, noise, 20, 3.0, 1.0, "none", c_mask)
            row = {"clip": clip["id"], "j": j, "frames": [s, s + FRAMES - 1],
                   "key_teacher": psnr(dec_key(k_gen), gt), "key_vae": psnr(dec_key(k_x0), gt),
                   "cont_teacher": psnr(dec_cont(c_gen), gt), "cont_vae": psnr(dec_cont(c_x0), gt),
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(__file__).with_suffix(".jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for k in ("key_teacher", "key_vae", "cont_teacher", "cont_vae"):
        print(k, round(float(np.mean([r[k] for r in rows])), 3))


if __name__ == "__main__":
    args = [int(x) for x in sys.argv[1:]] or [4, 12]
    main(args[0], args[1:] or [12])
