"""The brute-force oracle of the input-aware mask (tests only; ``L x L`` bool, small grids).

:func:`reference_token_mask` evaluates the paper's mask (Eq. 1-3 plus global tokens) directly in the
original token order, without permutation or blocks:

    allowed(q, k) = global(q) or global(k)                      reference / extra tokens: dense both ways
                                                                (reference_itself: global(q) and global(k))
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


def reference_token_mask(labels: np.ndarray, frame_select: np.ndarray, grid: TokenGrid,
                         reference_itself: bool = False) -> torch.Tensor:
    """bool [L, L] (rows: queries) of the input-aware mask, by broadcasting over token pairs; with
    ``reference_itself`` a global query attends to global keys only."""
    frame, label = token_frame_and_label(labels, grid)
    sel = torch.as_tensor(np.asarray(frame_select, bool))
    glob = frame < 0
    fq, fk = frame[:, None], frame[None, :]
    same_frame = (fq == fk) & ~glob[:, None]
    f = frame.clamp(min=0)
    same_region = (label[:, None] == label[None, :]) & (label[:, None] > 0)
    cross = same_region & sel[f[:, None], f[None, :]] & ~glob[:, None] & ~glob[None, :]
    glob_rows = glob[:, None] & glob[None, :] if reference_itself else glob[:, None]
    return glob_rows | glob[None, :] | same_frame | cross


def emulated_attend(q, k_pool, v_pool, bias, scale, need_lse):
    """What triton_splitk computes for a paged bias, from ``bias.materialize``: (float32 out, lse) like
    ``memory_efficient_attention_partial``, or (out in the input dtype, None) like the plain forward."""
    mq, mk = q.shape[1], k_pool.shape[1]
    rows = bias.block_tables.shape[0] * bias.block_tables.shape[1] * bias.page_size
    mask = bias.materialize((mq, rows))
    full = torch.full((mq, mk), float("-inf"))
    full[:, : mask.shape[-1]] = mask
    s = (q[0, :, 0].double() @ k_pool[0, :, 0].double().T) * scale + full.double()
    lse = torch.logsumexp(s, -1)
    out = (torch.softmax(s, -1) @ v_pool[0, :, 0].double())[None, :, None]
    if need_lse:
        return out.float(), lse.float()[None, None]
    return out.to(q.dtype), None
