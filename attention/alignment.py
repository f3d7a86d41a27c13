"""Where the pose lands in the video the model sees: the stock conditioning nodes' length and resize rules.

WanFunControlToVideo, Wan22FunControlToVideo, WanVaceToVideo and WanAnimateToVideo take the control
(pose) video as ``control_video[:length]`` (Animate: from ``video_frame_offset``) and resize it with
``comfy.utils.common_upscale(..., crop="center")``: a centre crop to the video's aspect ratio, then a
resize. The skeleton video is drawn from the pose on the pose's own canvas (IASA Render Pose with
width/height 0, or any size of the same aspect), so pose frame ``frame_offset + t`` drives video pixel
frame ``t`` (no stretching in time), and pose pixel ``(x, y)`` lands at ``((x - x0) * sx, (y - y0) * sy)``
with the crop box of :func:`center_crop_box`. A pose shorter than the video holds its last frame (what
WanAnimateToVideo does with its pose video; the other nodes leave those frames without control).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..pose.keypoints import PoseSequence

CROP_MODES = ("center", "stretch")


@dataclass(frozen=True)
class VideoAlignment:
    """``frame_offset``: pose frame shown by the video's first frame (Animate's ``video_frame_offset``
    minus its continue-motion frames, for the chunks after the first). ``crop``: ``"center"`` (the stock
    nodes) or ``"stretch"`` (scale each axis to the video, for a skeleton drawn at the video's size)."""

    frame_offset: int = 0
    crop: str = "center"

    def __post_init__(self):
        if int(self.frame_offset) < 0:
            raise ValueError(f"frame_offset must be >= 0, got {self.frame_offset}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop: unknown mode {self.crop!r}; choose from {CROP_MODES}")


@dataclass
class AlignedPose:
    """The pose on the video's pixel canvas, one frame per video pixel frame, and what was done to it."""

    pose: PoseSequence
    notes: list[str] = field(default_factory=list)


def center_crop_box(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """``(x0, y0, width, height)`` of the part of a ``src_w x src_h`` picture that
    ``comfy.utils.common_upscale(..., dst_w, dst_h, method, "center")`` keeps (the same arithmetic)."""
    old_aspect, new_aspect = src_w / src_h, dst_w / dst_h
    x = y = 0
    if old_aspect > new_aspect:
        x = round((src_w - src_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((src_h - src_h * (old_aspect / new_aspect)) / 2)
    return x, y, src_w - 2 * x, src_h - 2 * y


def align_pose(pose: PoseSequence, width: int, height: int, n_frames: int,
               alignment: VideoAlignment = VideoAlignment()) -> AlignedPose:
    """``pose`` as the stock node puts it into a ``width x height`` video of ``n_frames`` pixel frames."""
    if len(pose) < 1:
        raise ValueError("pose: the pose sequence is empty; give at least one frame")
    start = int(alignment.frame_offset)
    if start >= len(pose):
        raise ValueError(f"frame_offset: {start} is past the end of the pose ({len(pose)} frames); use a "
                         f"frame_offset below {len(pose)}")
    notes = []
    idx = np.arange(start, start + n_frames)
    if idx[-1] >= len(pose):
        held = int(idx[-1] - len(pose) + 1)
        notes.append(f"the pose has {len(pose) - start} frames from frame {start} for a video of {n_frames}: "
                     f"its last frame is held for the last {held} video frame(s)")
    elif len(pose) > idx[-1] + 1:
        notes.append(f"the pose has {len(pose)} frames, the video shows frames {start}..{idx[-1]} of it (the "
                     f"stock node cuts control_video[:length]; the last {len(pose) - idx[-1] - 1} are not used)")
    pts = pose.points[np.minimum(idx, len(pose) - 1)].copy()
    if (pose.width, pose.height) != (width, height):
        if alignment.crop == "center":
            x0, y0, cw, ch = center_crop_box(pose.width, pose.height, width, height)
            if (x0, y0) != (0, 0):
                notes.append(f"the pose canvas {pose.width}x{pose.height} is centre-cropped to {cw}x{ch} at "
                             f"({x0}, {y0}) for the {width}x{height} video, as the stock node resizes")
        else:
            x0, y0, cw, ch = 0, 0, pose.width, pose.height
        present = pts[..., 2] > 0
        pts[..., 0] = np.where(present, (pts[..., 0] - x0) * (width / cw), 0.0)
        pts[..., 1] = np.where(present, (pts[..., 1] - y0) * (height / ch), 0.0)
    return AlignedPose(PoseSequence(pts, width, height), notes)
