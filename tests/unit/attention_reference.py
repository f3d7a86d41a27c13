"""The brute-force oracle of the input-aware mask (tests only; ``L x L`` bool, small grids).

:func:`reference_token_mask` evaluates the paper's mask (Eq. 1-3 plus global tokens) directly in the
original token order, without permutation or blocks:

    allowed(q, k) = global(q) or global(k)                      reference / extra tokens: dense both ways
                    or frame(q) == frame(k)                     Eq. 3, same latent frame: dense
                    or (label(q) == label(k) != background      Eq. 3, same region across frames ...
                        and select[frame(q), frame(k)])         ... of a frame kept by Eq. 1-2

On a region layout it must equal ``BlockLayout.token_mask()`` (what the kernels compute).
"""
from __future__ import annotations

import numpy as np
import torch

from iasa.attention.grid import TokenGrid


def token_frame_and_label(labels: np.ndarray, grid: TokenGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 [L] latent video frame and region label per token, -1 for global tokens."""
    frame = torch.from_numpy(grid.token_frames())
    label = torch.full((grid.seq_len,), -1, dtype=torch.int64)
    s = grid.video_token_offset
    label[s : s + grid.video_tokens] = torch.from_numpy(np.asarray(labels, np.int64).reshape(-1))
    return frame, label


def reference_token_mask(labels: np.ndarray, frame_select: np.ndarray, grid: TokenGrid) -> torch.Tensor:
    """bool [L, L] (rows: queries) of the input-aware mask, by broadcasting over token pairs."""
    frame, label = token_frame_and_label(labels, grid)
    sel = torch.as_tensor(np.asarray(frame_select, bool))
    glob = frame < 0
    fq, fk = frame[:, None], frame[None, :]
    same_frame = (fq == fk) & ~glob[:, None]
    f = frame.clamp(min=0)
    same_region = (label[:, None] == label[None, :]) & (label[:, None] > 0)
    cross = same_region & sel[f[:, None], f[None, :]] & ~glob[:, None] & ~glob[None, :]
    return glob[:, None] | glob[None, :] | same_frame | cross
