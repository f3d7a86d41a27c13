"""The pose lands where the stock Wan conditioning nodes put the control video: same frames (cut, not
stretched), same centre crop (checked against ComfyUI's own common_upscale)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from iasa.attention.alignment import VideoAlignment, align_pose, center_crop_box
from iasa.attention.grid import TokenGrid
from iasa.attention.pose_layout import SparseAttentionConfig, build_pose_layout
from iasa.pose.keypoints import BODY, N_POINTS, PoseSequence

from iasa.pose.synthetic import talking_pose


def dots_pose(n: int, width: int, height: int, seed: int = 0) -> PoseSequence:
    """Body points scattered over the canvas, moving 3 px right per frame."""
    rng = np.random.default_rng(seed)
    pts = np.zeros((n, N_POINTS, 3), np.float32)
    base = rng.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height], (18, 2))
    for t in range(n):
        pts[t, BODY, :2] = base + [3.0 * t, 0.0]
        pts[t, BODY, 2] = 1.0
    return PoseSequence(pts, width, height)


def test_a_longer_pose_is_cut_not_stretched(caplog):
    pose = dots_pose(27, 128, 128)                     # ceil(duration x fps) frames for a 25-frame video
    with caplog.at_level(logging.INFO, logger="iasa.attention.pose_layout"):
        plan = build_pose_layout(pose, TokenGrid.from_latent_shape((7, 16, 16)), SparseAttentionConfig(block_size=16))
    aligned = align_pose(pose, 128, 128, 25)
    assert np.array_equal(aligned.pose.points, pose.points[:25])      # pose frame t drives video frame t
    assert "the last 2 are not used" in aligned.notes[0] and "the last 2 are not used" in caplog.text
    assert plan.notes == tuple(aligned.notes)


def test_a_shorter_pose_holds_its_last_frame_and_says_so():
    pose = dots_pose(10, 128, 128)
    aligned = align_pose(pose, 128, 128, 17)
    assert np.array_equal(aligned.pose.points[:10], pose.points)
    assert (aligned.pose.points[10:] == pose.points[-1]).all()
    assert "held for the last 7 video frame(s)" in aligned.notes[0]


def test_frame_offset_starts_the_video_later_in_the_pose():
    pose = dots_pose(40, 128, 128)
    aligned = align_pose(pose, 128, 128, 17, VideoAlignment(frame_offset=12))
    assert np.array_equal(aligned.pose.points, pose.points[12:29])
    with pytest.raises(ValueError, match="frame_offset: 40 is past the end"):
        align_pose(pose, 128, 128, 17, VideoAlignment(frame_offset=40))


@pytest.mark.parametrize("src, dst", [((640, 256), (128, 128)), ((256, 480), (208, 160)), ((300, 200), (150, 100))])
def test_centre_crop_matches_comfyuis_common_upscale(src, dst):
    """Blobs drawn at the pose's points on its canvas, resized by ComfyUI's common_upscale(..., "center"),
    peak where align_pose puts the points."""
    from iasa.training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path(cpu=True)
    import comfy.utils

    (sw, sh), (dw, dh) = src, dst
    pose = dots_pose(1, sw, sh, seed=3)
    img = torch.zeros(1, 1, sh, sw)
    for x, y in pose.points[0, BODY, :2]:
        xi, yi = int(x), int(y)
        img[0, 0, yi - 3:yi + 4, xi - 3:xi + 4] = 1.0
    out = comfy.utils.common_upscale(img, dw, dh, "bilinear", "center")[0, 0]
    aligned = align_pose(pose, dw, dh, 1).pose
    x0, y0, cw, ch = center_crop_box(sw, sh, dw, dh)
    checked = 0
    for (x, y), (xs, ys) in zip(aligned.points[0, BODY, :2], pose.points[0, BODY, :2]):
        if not (x0 <= xs < x0 + cw and y0 <= ys < y0 + ch):
            assert not (0 <= x < dw and 0 <= y < dh)      # cropped away by the stock node: off the video
            continue
        if not (x0 + 4 <= xs < x0 + cw - 4 and y0 + 4 <= ys < y0 + ch - 4):
            continue                                      # its blob is cut by the crop border
        checked += 1
        r = 2
        win = out[max(0, int(y) - r - 2):int(y) + r + 3, max(0, int(x) - r - 2):int(x) + r + 3]
        assert win.max() > 0.4, (x, y)                  # the blob is where the point was mapped
    assert checked >= 6


def test_stretch_scales_each_axis():
    pose = dots_pose(1, 200, 100)
    aligned = align_pose(pose, 100, 100, 1, VideoAlignment(crop="stretch"))
    np.testing.assert_allclose(aligned.pose.points[0, BODY, 0], pose.points[0, BODY, 0] * 0.5, rtol=1e-6)
    np.testing.assert_allclose(aligned.pose.points[0, BODY, 1], pose.points[0, BODY, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="crop"):
        VideoAlignment(crop="fit")


def test_continued_frames_keep_the_pose_in_the_videos_time():
    """Wan-Animate continue_motion: the first latent frames are given; the pose-driven frames after them
    cover the pixel frames of their place in the generated video."""
    grid = TokenGrid.from_latent_shape((6, 16, 16), leading_ref_frames=3, continued_frames=2)   # ref + 2 + 3
    assert grid.video_frames == 3 and grid.pixel_frames == 17 and list(grid.pixel_frames_of_latent(0)) == [5, 6, 7, 8]
    pose = talking_pose(17, 128, 128)
    plan = build_pose_layout(pose, grid, SparseAttentionConfig(block_size=4))
    full = build_pose_layout(pose, TokenGrid.from_latent_shape((5, 16, 16)), SparseAttentionConfig(block_size=4))
    assert np.array_equal(plan.labels, full.labels[2:])
    assert grid.global_tokens == 3 * 64
