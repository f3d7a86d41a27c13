"""Region label of every video token, per latent frame, from a pose sequence.

Labels follow ``pose.regions.LABELS``: 0 background, 1 face, 2 left hand, 3 right hand, 4 arms,
5 torso. A token of latent frame ``f`` gets a region when any pixel of its ``token_px`` square is inside
that region in any pixel frame that ``f`` covers (union over the 1 or 4 pixel frames); overlaps go
to the higher priority region, face > hands > arms > torso. Only the chosen ``regions`` take part:
an unchosen region is background, and the priority runs over the chosen ones (with arms unchosen, an
arm in front of the torso is torso).
"""
from __future__ import annotations

import logging
from typing import Iterable

import numpy as np

from ..pose.keypoints import PoseSequence
from ..pose.regions import LABELS, REGIONS, frame_masks
from .grid import TokenGrid

log = logging.getLogger(__name__)

# Highest priority last: later regions overwrite earlier ones.
_PRIORITY_LOW_TO_HIGH = ("torso", "arms", "right_hand", "left_hand", "face")


def check_regions(regions: Iterable[str]) -> tuple[str, ...]:
    """Validate a region subset; returns it in canonical order (``pose.regions.REGIONS``)."""
    chosen = tuple(regions)
    bad = [r for r in chosen if r not in REGIONS]
    if bad:
        raise ValueError(f"regions: unknown region(s) {bad}; choose from {list(REGIONS)}")
    return tuple(r for r in REGIONS if r in chosen)


def _pool_any(mask: np.ndarray, up: int) -> np.ndarray:
    """[H*up, W*up] bool -> [H, W]: a cell is set when any of its pixels is (two 1-D passes, fast)."""
    hh, ww = mask.shape
    rows = mask.reshape(hh // up, up, ww).any(axis=1)
    return rows.reshape(hh // up, ww // up, up).any(axis=2)


def token_labels(
    pose_px: PoseSequence,
    grid: TokenGrid,
    regions: Iterable[str] = REGIONS,
    latent_frames: Iterable[int] | None = None,
) -> np.ndarray:
    """uint8 ``[T, hp, wp]`` region labels per latent video frame.

    ``pose_px`` must already be on the video's pixel canvas with one frame per pixel frame (see
    :func:`attention.alignment.align_pose`). ``latent_frames`` picks which latent frames to label (default all of
    ``grid.video_frames``; context windows pass their frame indices).
    """
    chosen = check_regions(regions)
    frames = list(range(grid.video_frames)) if latent_frames is None else [int(f) for f in latent_frames]
    up = grid.token_px
    ch, cw = grid.hp * up, grid.wp * up
    labels = np.zeros((len(frames), grid.hp, grid.wp), np.uint8)
    if not chosen:
        return labels
    order = [r for r in _PRIORITY_LOW_TO_HIGH if r in chosen]
    for i, f in enumerate(frames):
        acc = {r: np.zeros((ch, cw), bool) for r in chosen}
        for t in grid.pixel_frames_of_latent(f):
            if t >= len(pose_px):
                raise ValueError(f"pose_px: latent frame {f} needs pixel frame {t} but the pose has {len(pose_px)} frames; "
                                 "align it to the video with attention.alignment.align_pose")
            masks = frame_masks(pose_px.points[t], ch, cw, 1.0)
            for r in chosen:
                acc[r] |= masks[r]
        for r in order:
            labels[i][_pool_any(acc[r], up)] = LABELS[r]
    return labels


def region_token_counts(labels: np.ndarray) -> dict[str, int]:
    """Tokens per region (background included) over all frames of ``labels``."""
    counts = np.bincount(labels.ravel(), minlength=len(LABELS))
    return {name: int(counts[v]) for name, v in LABELS.items()}
