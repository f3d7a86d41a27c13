"""Continuation windows of the teacher data: latents sliced from one encode of the whole clip (what IASA Long Video's
later windows see), with the clip's attention pattern at those latent frames."""
from __future__ import annotations

import numpy as np
import torch

from iasa.attention.pose_layout import SparseAttentionConfig, pose_pattern
from iasa.pose.keypoints import PoseSequence
from iasa.pose.render import render_pose
from iasa.training.clips import load_clips
from iasa.training.teacher_data import (build_continuation_set, build_latent_set, encode_normalised, join_latent_sets,
                                        plan_continuation, token_grid)
from iasa.training.tiny_wan import VAEConfig, build_vae
from iasa.training.vae_train import wan21_latent_format


def test_plan_continuation_offsets_fit_the_clip():
    rng = np.random.default_rng(0)
    plan = plan_continuation([9, 21, 17, 5], frames=9, per_clip=2, rng=rng)   # 9 frames = 3 latents
    assert [c for c, _ in plan] == [1, 2]                  # 9 frames (3 latents) and 5 frames have no offset >= 1
    for c, offs in plan:
        n_lat = ({1: 21, 2: 17}[c] - 1) // 4 + 1
        assert len(offs) == len(set(offs)) == min(2, n_lat - 3) and min(offs) >= 1 and max(offs) + 3 <= n_lat
    assert plan_continuation([21], 9, 0, rng) == []


def test_continuation_windows_are_slices_of_the_whole_clip_encode():
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(dim=8), seed=1).eval()
    clips = load_clips("procedural:3:21:32", "train")
    config = SparseAttentionConfig()
    cont = build_continuation_set(clips, vae, 9, 2, torch.device("cpu"), workers=1, amp=False, seed=3, pattern=config)
    assert cont is not None and len(cont) == 6             # 21 frames = 6 latents: 2 of the offsets 1-3 per clip
    assert any(not i.endswith("@L3") for i in cont.ids[1::2])   # some clip is encoded only up to its last window
    fmt = wan21_latent_format()
    for i, ident in enumerate(cont.ids):
        name, j = ident.rsplit("@L", 1)
        j = int(j)
        clip = next(c for c in clips if str(c["id"]) == name)
        n = 1 + 4 * (j + 3 - 1)      # frames the clip was encoded with are at least up to the window's end
        whole = encode_normalised(vae, torch.from_numpy(clip["frames"][None]), False, fmt)
        # causal VAE: latents j..j+2 of any longer one-pass encode equal those of the encode up to frame n
        assert torch.allclose(cont.x0[i], whole[0, :, j:j + 3], atol=1e-5)
        h, w = clip["frames"].shape[1:3]
        pose = PoseSequence(clip["keypoints"][:n], w, h)
        ctrl = encode_normalised(vae, torch.from_numpy(np.rint(render_pose(pose, w, h) * 255).astype(np.uint8)[None]),
                                 False, fmt)
        assert torch.allclose(cont.control[i], ctrl[0, :, j:j + 3], atol=1e-5)
        labels, select, _ = pose_pattern(PoseSequence(clip["keypoints"], w, h), token_grid((3, h // 8, w // 8)),
                                         config, latent_frames=[j, j + 1, j + 2])
        assert np.array_equal(cont.labels[i].numpy(), labels) and np.array_equal(cont.frame_select[i].numpy(), select)
    keyed = build_latent_set(clips, vae, 9, 9, torch.device("cpu"), workers=1, amp=False)
    both = join_latent_sets(keyed, cont)
    assert len(both) == len(keyed) + 6 and both.ids[len(keyed):] == cont.ids
    assert build_continuation_set(clips, vae, 21, 2, torch.device("cpu"), workers=1, amp=False) is None
