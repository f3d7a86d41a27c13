"""Video self-attention under a per-sample token mask, for training the sparse IASA-mini teacher.

Installed as ComfyUI's ``optimized_attention_override`` (``transformer_options``) on a ``WanModel`` forward:
calls whose queries and keys both span the masked sequence (the video self-attention, ref_conv tokens
included) run ``scaled_dot_product_attention`` with the bool mask ``[B, L, L]`` of
``attention.pattern_mask.pattern_token_mask``; everything else (cross-attention to the text context)
goes to ComfyUI's own function. Training controls the shapes (a ``--context-tokens``-long text context,
1 by default, never the video's length), so the lengths tell the two apart here; the ComfyUI patch, which
meets arbitrary workflows, tells them by the call site. Inference runs the same pattern through IASA Sparse
Attention's block kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class MaskedSelfAttention:
    def __init__(self, mask: torch.Tensor):
        if mask.ndim != 3 or mask.shape[1] != mask.shape[2] or mask.dtype != torch.bool:
            raise ValueError(f"MaskedSelfAttention: bool mask [B, L, L] expected, got {tuple(mask.shape)} {mask.dtype}")
        self.mask = mask
        self.calls = 0

    def __call__(self, func, *args, **kwargs):
        q, k, v = args[:3]
        heads = kwargs.get("heads", args[3] if len(args) > 3 else None)
        L = self.mask.shape[-1]
        if (kwargs.get("skip_reshape") or kwargs.get("mask") is not None or q.ndim != 3
                or q.shape[1] != L or k.shape[1] != L or q.shape[0] != self.mask.shape[0]):
            return func(*args, **kwargs)
        b, _, hd = q.shape
        qh, kh, vh = (t.view(b, L, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=self.mask[:, None])
        self.calls += 1
        return out.transpose(1, 2).reshape(b, L, hd)


def transformer_options(mask: torch.Tensor | None) -> dict:
    """``transformer_options`` for a ``WanModel`` forward: masked self-attention, or ComfyUI's dense path."""
    return {} if mask is None else {"optimized_attention_override": MaskedSelfAttention(mask)}
