"""IASA Keyed Windows without a server: the window plan, per-window encode and cross-faded decode (an exact codec
gives the video back), the wrapper running the windows as consecutive blocks, and IASA Sparse Attention fitting
its pose to each window as a clip of its own."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from iasa.sampling.keyed_windows import KeyedWindowPlan, decode_windows, encode_windows
from iasa.sampling.long_video import LongVideoConfig, LongVideoPatch, LongVideoWindow

from .test_long_video import FakeExecutor, inputs, per_frame_flow_model, run


def test_plan_covers_the_video_with_keyed_windows():
    plan = KeyedWindowPlan(169, 49, 8)
    assert plan.starts == (0, 40, 80, 120) and len(plan) == 4 and plan.window_latents == 13
    assert plan.latent_total == 52 and plan.latent_windows()[1] == range(13, 26)
    w = plan.pixel_weights()
    acc = torch.zeros(169, dtype=torch.float64)
    for pw, ww in zip(plan.pixel_windows(), w):
        acc[pw.start:pw.stop] += ww
    assert torch.allclose(acc, torch.ones(169, dtype=torch.float64))
    assert KeyedWindowPlan(33, 49, 8).starts == (0,) and KeyedWindowPlan(33, 49, 8).window_latents == 9
    assert KeyedWindowPlan.from_dict(plan.to_dict()) == plan
    assert KeyedWindowPlan.from_latent_length(43, 49, 8) == plan
    with pytest.raises(ValueError, match="window_frames"):
        KeyedWindowPlan(169, 48, 8)
    with pytest.raises(ValueError, match="overlap_frames"):
        KeyedWindowPlan(169, 49, 49)


def exact_encode(frames: torch.Tensor) -> torch.Tensor:
    """A lossless 'VAE': latent frame 0 holds frame 0, latent j >= 1 frames 4j-3..4j (as channels)."""
    t = frames.shape[0]
    groups = [frames[:1].repeat(4, 1, 1, 1)] + [frames[4 * j - 3:4 * j + 1] for j in range(1, (t - 1) // 4 + 1)]
    return torch.stack([g.permute(0, 3, 1, 2).reshape(-1, *g.shape[1:3]) for g in groups], dim=1)[None]


def exact_decode(latent: torch.Tensor) -> torch.Tensor:
    z = latent[0]                                                    # [4C, N, H, W]
    c = z.shape[0] // 4
    frames = [z[:c, 0].permute(1, 2, 0)[None]]
    for j in range(1, z.shape[1]):
        frames.append(z[:, j].reshape(4, c, *z.shape[2:]).permute(0, 2, 3, 1))
    return torch.cat(frames)[None]                                    # [1, T, H, W, C]


def test_an_exact_codec_gives_the_video_back_through_keyed_windows():
    video = torch.rand(69, 3, 2, 3)
    plan = KeyedWindowPlan(69, 21, 6)
    latent = encode_windows(video, plan, exact_encode)
    assert latent.shape[2] == plan.latent_total == len(plan) * 6
    for lw, pw in zip(plan.latent_windows(), plan.pixel_windows()):   # every window starts on its own key frame
        assert torch.equal(exact_decode(latent[:, :, lw.start:lw.stop])[0], video[pw.start:pw.stop])
    torch.testing.assert_close(decode_windows(latent, plan, exact_decode), video, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="does not hold"):
        decode_windows(latent[:, :, :-1], plan, exact_decode)


def test_overlaps_cross_fade_between_neighbouring_windows():
    plan = KeyedWindowPlan(29, 17, 5)                                  # windows 0-16 and 12-28 share 5 frames
    latent = torch.cat([torch.full((1, 4, 5, 1, 1), float(k)) for k in range(len(plan))], dim=2)
    out = decode_windows(latent, plan, lambda z: z.mean().expand(17, 1, 1, 1).clone())
    values = out.flatten()
    assert torch.all(values[:12] == 0) and torch.all(values[17:] == 1)
    assert torch.all(torch.diff(values[11:18]) > 0)                     # a monotone ramp across the overlap


def test_the_wrapper_runs_keyed_windows_as_consecutive_blocks():
    plan = KeyedWindowPlan(93, 49, 8)                                  # 3 windows of 13 latents: 2 would share 5
    x, t, concat, ref = inputs(plan.latent_total)
    patch = LongVideoPatch(LongVideoConfig(plan.window_latents, 0), keyed=plan)
    ex = FakeExecutor(per_frame_flow_model)
    out = run(patch, ex, x, t, concat, ref)
    torch.testing.assert_close(out, per_frame_flow_model(x, t, concat, {"reference_latent": ref}), atol=1e-6,
                               rtol=1e-6)
    assert [c["to"]["context_window"].pixel_start for c in ex.calls] == [0, 22, 44]
    for call, lw in zip(ex.calls, plan.latent_windows()):
        assert torch.equal(call["x"], x[:, :, lw.start:lw.stop])
        assert torch.equal(call["c_concat"], concat[:, :, lw.start:lw.stop])
        assert call["kwargs"]["reference_latent"] is ref
    x2, t2, concat2, ref2 = inputs(plan.latent_total - 1)
    with pytest.raises(ValueError, match="connect its latent output to the sampler"):
        run(patch, ex, x2, t2, concat2, ref2)


def test_sparse_attention_fits_its_pose_to_each_keyed_window_alone():
    from iasa.attention.patch import CALL_KEY, SparseAttentionPatch
    from iasa.attention.pose_layout import SparseAttentionConfig, build_pose_layout
    from iasa.pose.keypoints import PoseSequence
    from iasa.pose.synthetic import talking_pose

    pose = talking_pose(41, 64, 64)
    config = SparseAttentionConfig(top_k=1, block_size=4)
    sparse = SparseAttentionPatch(pose, config, kernel="sdpa")
    seen = []
    ex = FakeExecutor(lambda *a: None)
    ex.class_obj.diffusion_model = types.SimpleNamespace(patch_size=(1, 2, 2), ref_conv=None)
    ex.fn = lambda x, t, c, kw: seen.append(ex.calls[-1]["to"][CALL_KEY])
    x = torch.zeros(1, 16, 3, 8, 8)
    window = LongVideoWindow((3, 4, 5), 6, 1, 2, pixel_start=28)
    sparse.apply_model_wrapper(ex, x, torch.ones(1), None, None, None, {"context_window": window})
    call = seen[0]
    assert call.pixel_start == 28 and call.latent_frames is None and call.total_frames is None
    got = sparse.layout_for(call)
    alone = build_pose_layout(PoseSequence(pose.points[28:], pose.width, pose.height), call.grid, config)
    assert np.array_equal(got.labels, alone.labels) and np.array_equal(got.frame_select, alone.frame_select)
