"""Pose sequence -> input-aware block layout: the one call the ComfyUI patch makes per sampling run.

``build_pose_layout(pose, grid, config, alignment=...)`` puts the pose onto the latent's video with the
stock conditioning node's length and centre-crop rules (alignment), labels every token with its region
(token_regions), selects frames (global_mask, paper Eq. 1-2), and builds the permuted block layout
(layout, Eq. 3 at block level). What the alignment did (frames cut or held, a crop) is logged and kept
in ``notes``. When the pose has nobody in it (or nobody on
the grid) the result has ``layout=None`` and a ``fallback_reason``: the caller (the ComfyUI patch, the
node) runs dense attention and logs that reason as a warning, or raises under ``strict``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import public_name
from ..pose.keypoints import PoseSequence
from ..pose.regions import REGIONS
from .global_mask import FRAME_POSE_MODES, global_frame_mask
from .grid import TokenGrid
from .layout import PACKINGS, BlockGroups, BlockLayout, DensityReport, build_region_layout
from .alignment import VideoAlignment, align_pose
from .token_regions import check_regions, region_token_counts, token_labels

log = logging.getLogger(__name__)


# What the global tokens (the reference picture's ref_conv tokens) attend to as queries. "everything": the whole
# sequence, as in dense attention (what the bundled models were trained with). "itself": the global tokens only,
# so the reference never reads the video; every video token still attends to the reference. At 480p x 81 frames
# the reference's rows are 34 % of the Wan-1.3B student's kept blocks (docs/training/session_2026_12_07c); a
# causal student's reference then no longer depends on any frame (a stream can compute it once).
REFERENCE_ATTENDS = ("everything", "itself")


@dataclass(frozen=True)
class SparseAttentionConfig:
    """Knobs of the input-aware pattern (defaults: paper figure K=2, causal student, all regions)."""

    top_k: int = 2                          # past (or other) frames kept per query frame, besides itself
    causal: bool = True                     # False: top-K among all frames (bidirectional teachers)
    regions: tuple[str, ...] = REGIONS      # regions that get cross-frame attention
    block_size: int = 128                   # kernel block; 16..64 for tiny models
    allow_scale: bool = False               # rigid alignment with uniform scale
    frame_pose: str = "mean"                # pose of a latent frame: "mean" or "last" of its pixel frames
    min_shared_points: int = 3              # upper-body points visible in both frames to score a pair
    packing: str = "frame"                  # "frame": groups of a frame share blocks (masked inside), "group": padded
    reference_attends: str = "everything"   # what global (ref_conv) query tokens attend to: REFERENCE_ATTENDS

    def __post_init__(self):
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.frame_pose not in FRAME_POSE_MODES:
            raise ValueError(f"frame_pose: unknown mode {self.frame_pose!r}; choose from {FRAME_POSE_MODES}")
        if self.packing not in PACKINGS:
            raise ValueError(f"packing: unknown {self.packing!r}; choose from {PACKINGS}")
        if self.reference_attends not in REFERENCE_ATTENDS:
            raise ValueError(f"reference_attends: unknown {self.reference_attends!r}; choose from {REFERENCE_ATTENDS}")
        object.__setattr__(self, "regions", check_regions(self.regions))

    @property
    def reference_itself(self) -> bool:
        return self.reference_attends == "itself"


@dataclass
class PoseLayout:
    """Everything built from one pose for one grid; ``layout is None`` means: fall back to dense."""

    grid: TokenGrid
    config: SparseAttentionConfig
    labels: np.ndarray | None = None          # uint8 [T, hp, wp]
    frame_select: np.ndarray | None = None    # bool [T, T]
    frame_scores: np.ndarray | None = None    # float [T, T] rigid residuals (inf: not comparable)
    layout: BlockLayout | None = None
    groups: BlockGroups | None = None
    density: DensityReport | None = None
    fallback_reason: str | None = None
    notes: tuple[str, ...] = ()               # how the pose was fitted to the video (alignment)

    @property
    def dense_fallback(self) -> bool:
        return self.layout is None


def build_pose_layout(
    pose: PoseSequence,
    grid: TokenGrid,
    config: SparseAttentionConfig = SparseAttentionConfig(),
    latent_frames: list[int] | None = None,
    total_latent_frames: int | None = None,
    alignment: VideoAlignment = VideoAlignment(),
) -> PoseLayout:
    """Build the layout of ``pose`` (any length, any canvas) for ``grid``, the pose placed on the video as
    the stock conditioning node places the control video (``alignment``).

    Context windows: ``latent_frames`` lists the video latent frames the call covers (length
    ``grid.video_frames``) out of ``total_latent_frames`` (default ``max(latent_frames) + 1``); the pose
    is then fitted to the whole video and the window's frames are taken.
    """
    if latent_frames is not None:
        latent_frames = [int(f) for f in latent_frames]
        if len(latent_frames) != grid.video_frames:
            raise ValueError(f"latent_frames: {len(latent_frames)} indices for a grid of {grid.video_frames} video frames")
        if min(latent_frames) < 0:
            raise ValueError(f"latent_frames: negative index in {latent_frames}")
        total = total_latent_frames or max(latent_frames) + 1
        if max(latent_frames) >= total:
            raise ValueError(f"latent_frames: index {max(latent_frames)} >= total_latent_frames={total}")
        n_px = (total - 1) * grid.temporal_stride + 1
    else:
        n_px = grid.pixel_frames
    out = PoseLayout(grid=grid, config=config)
    if not pose.has_person().any():
        return _fallback(out, "the pose sequence has no person in any frame")
    aligned = align_pose(pose, grid.pixel_width, grid.pixel_height, n_px, alignment)
    out.notes = tuple(aligned.notes)
    for note in out.notes:
        log.info("IASA sparse layout: %s", note)
    out.labels, out.frame_select, out.frame_scores = pose_pattern(aligned.pose, grid, config, latent_frames)
    if config.regions and not out.labels.any():
        return _fallback(out, f"no token of the {grid.hp}x{grid.wp} grid falls in a chosen region "
                              f"({', '.join(config.regions)}); is the pose on the video's canvas?")
    out.layout, out.groups = build_region_layout(out.labels, out.frame_select, grid, config.block_size,
                                                 config.packing, config.reference_itself)
    counts = region_token_counts(out.labels)
    if grid.global_tokens:
        counts["global"] = grid.global_tokens
    out.density = out.layout.density(counts)
    if out.density.block_density >= 1.0:
        raise BlockSizeError(block_size_problem(out))
    log.info("IASA sparse layout: %s; %s", grid.describe(), out.density.summary())
    return out


BLOCK_SIZE_CHOICES = (16, 32, 64, 128)   # multiples of 16: every kernel takes them


@public_name
class BlockSizeError(ValueError):
    """A block size with which the sparse kernel would do at least the work of dense attention."""


def block_size_problem(plan: PoseLayout) -> str:
    """Why ``plan``'s block size is refused, and which block sizes are cheaper than dense on its grid."""
    grid, cfg = plan.grid, plan.config
    better = []
    for bs in BLOCK_SIZE_CHOICES:
        if bs < cfg.block_size:
            layout, _ = build_region_layout(plan.labels, plan.frame_select, grid, bs, cfg.packing, cfg.reference_itself)
            d = layout.density().block_density
            if d < 1.0:
                better.append(f"{bs} ({100 * d:.0f} %)")
    fix = (f"use block_size {' or '.join(better)} of dense work" if better else
           "no block size of 16 or more is cheaper than dense attention here: make the video larger, or run it "
           "without IASA Sparse Attention")
    split = ("are split into region groups padded to whole blocks" if cfg.packing == "group" else
             "are padded to whole blocks (its region groups share blocks)")
    return (f"block_size: {cfg.block_size} is too large for this video ({grid.describe()}): each frame's "
            f"{grid.tokens_per_frame} tokens {split}, so the sparse "
            f"kernel would do {100 * plan.density.block_density:.0f} % of the work of dense attention; {fix}")


def pose_pattern(pose_px: PoseSequence, grid: TokenGrid, config: SparseAttentionConfig,
                 latent_frames: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Region labels ``[T, hp, wp]``, frame selection and scores ``[T, T]`` of a pose already on the video's
    pixel canvas with one frame per pixel frame (``alignment.align_pose``): the pattern the layout is built from."""
    labels = token_labels(pose_px, grid, config.regions, latent_frames)
    select, scores = global_frame_mask(pose_px, grid, config.top_k, config.causal, config.allow_scale,
                                       config.frame_pose, config.min_shared_points, latent_frames)
    return labels, select, scores


def _fallback(out: PoseLayout, reason: str) -> PoseLayout:
    out.fallback_reason = reason
    log.info("IASA sparse layout: none for %s: %s", out.grid.describe(), reason)
    return out
