"""Picture of an input-aware layout, for the node's IMAGE preview.

Top: the region label grid of every latent frame, left to right, wrapped into rows. Bottom: the block
matrix (rows: query blocks, columns: key blocks, in slot order); a kept block is coloured by its query
block's region (white for background, pale yellow for global tokens), a skipped block is black.
Returns float32 ``[H, W, 3]`` in 0..1 (ComfyUI IMAGE wants ``[1, H, W, 3]``). :func:`layout_summary`
is the matching text (the node's ``density`` output).
"""
from __future__ import annotations

import numpy as np

from ..pose.regions import LABELS
from .pose_layout import PoseLayout

REGION_COLORS = {
    "background": (0.16, 0.16, 0.18),
    "face": (1.00, 0.62, 0.10),
    "left_hand": (0.25, 0.85, 0.25),
    "right_hand": (0.25, 0.55, 1.00),
    "arms": (0.85, 0.35, 0.85),
    "torso": (0.20, 0.75, 0.75),
}
GLOBAL_COLOR = (0.95, 0.95, 0.55)
KEPT_BACKGROUND_COLOR = (1.0, 1.0, 1.0)
GAP_COLOR = (0.05, 0.05, 0.05)


def _label_palette() -> np.ndarray:
    pal = np.zeros((max(LABELS.values()) + 1, 3), np.float32)
    for name, value in LABELS.items():
        pal[value] = REGION_COLORS[name]
    return pal


def labels_strip(labels: np.ndarray, width: int, gap: int = 2, max_cell: int = 8) -> np.ndarray:
    """Per-frame coloured label grids, wrapped into rows to fit ``width`` pixels."""
    T, hp, wp = labels.shape
    cell = int(max(1, min(max_cell, (width - gap) // max(1, min(T, 6)) // wp)))
    tw, th = wp * cell + gap, hp * cell + gap
    cols = max(1, min(T, (width - gap) // tw))
    rows = -(-T // cols)
    img = np.empty((rows * th + gap, max(width, cols * tw + gap), 3), np.float32)
    img[:] = GAP_COLOR
    pal = _label_palette()
    for f in range(T):
        r, c = divmod(f, cols)
        tile = np.repeat(np.repeat(pal[labels[f]], cell, axis=0), cell, axis=1)
        y, x = gap + r * th, gap + c * tw
        img[y : y + hp * cell, x : x + wp * cell] = tile
    return img


def block_matrix_image(plan: PoseLayout, side: int) -> np.ndarray:
    """The block pattern as a square picture of about ``side`` pixels."""
    mask = plan.layout.to_dense()[0].numpy()
    nb = mask.shape[0]
    pal = _label_palette()
    region = plan.groups.block_region
    row_color = np.where((region < 0)[:, None], np.asarray(GLOBAL_COLOR, np.float32),
                         pal[np.clip(region, 0, None)])
    row_color[region == LABELS["background"]] = KEPT_BACKGROUND_COLOR
    img = np.where(mask[..., None], row_color[:, None, :], 0.0).astype(np.float32)
    if nb > side:  # pool: a pixel shows the brightest block it covers
        f = -(-nb // side)
        pad = f * (-(-nb // f)) - nb
        img = np.pad(img, ((0, pad), (0, pad), (0, 0)))
        n = img.shape[0] // f
        img = img.reshape(n, f, n, f, 3).max(axis=(1, 3))
    else:
        up = max(1, side // nb)
        img = np.repeat(np.repeat(img, up, axis=0), up, axis=1)
    return img


def render_layout_preview(plan: PoseLayout, width: int = 768) -> np.ndarray:
    """float32 [H, W, 3] picture of ``plan`` (labels strip above the block matrix)."""
    parts = []
    if plan.labels is not None:
        parts.append(labels_strip(plan.labels, width))
    if plan.layout is not None:
        parts.append(block_matrix_image(plan, width))
    if not parts:  # nothing to show (dense fallback without labels): a dark tile
        return np.full((64, width, 3), GAP_COLOR, np.float32)
    w = max(p.shape[1] for p in parts)
    padded = []
    for p in parts:
        canvas = np.empty((p.shape[0] + 4, w, 3), np.float32)
        canvas[:] = GAP_COLOR
        x = (w - p.shape[1]) // 2
        canvas[2 : 2 + p.shape[0], x : x + p.shape[1]] = p
        padded.append(canvas)
    return np.concatenate(padded, axis=0)


def layout_summary(plan: PoseLayout, source: str, strict: bool) -> str:
    """What the node reports: the grid and where it came from, the density or the fallback, how the pose
    was fitted to the video, and what happens to calls that cannot run sparse."""
    parts = [f"{plan.grid.describe()} ({source})"]
    if plan.layout is None:
        parts.append(f"dense attention (fallback): {plan.fallback_reason}")
    else:
        parts.append(plan.density.summary())
    parts += list(plan.notes)
    parts.append("strict: a call that cannot run sparse stops sampling with an error" if strict else
                 "calls that cannot run sparse run dense, logged once per run with the reason")
    return "; ".join(parts)
