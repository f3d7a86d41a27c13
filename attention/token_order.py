"""Group the tokens once per model call: the DiT runs in the layout's slot order (issue 10, item 2).

Without grouping every sparse self-attention gathers q/k/v into (frame, region) slot order and scatters
the output back. With it the model's token sequence itself is kept in slot order between the first and
the last block, so the kernels attend on slot-ordered q/k/v directly (``SparseKernel.slots``):

- :class:`GroupedForward`, an object patch of ``diffusion_model.forward_orig``, permutes the RoPE
  frequencies once (``freqs`` covers every token, global ones included) and marks the call's
  ``transformer_options`` with the :class:`SlotOrder` (:data:`GROUPED_KEY`);
- :class:`GroupedBlock`, a ``patches_replace["dit"]`` block replace on the first and last block (an
  earlier replace there is chained), permutes ``x`` before the first block and restores it after the
  last, so the head, the ref_conv crop and unpatchify see the stock order.

Padding: the slot sequence keeps the layout's padding slots (``S >= L`` tokens): they enter as zeros,
never act as keys (the kernels mask them; dense calls run on the un-padded slots, :meth:`SlotOrder.dense`)
and are dropped at the restore. FFN, norms, cross-attention and the per-call modulation act per token.

Grouping applies to WanModel and CameraWanModel with per-call timesteps. Anything else (VACE hints, the
Animate face/pose extras, S2V/HuMo audio, per-frame timesteps of Wan 2.2 TI2V, no prepared kernel) runs
the per-layer gather path, with the reason logged once per run (:func:`plan_slot_order`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import BlockLayout
from .slots import cached

GROUPED_KEY = "iasa_slot_order"        # transformer_options: the SlotOrder the model's tokens are in
GROUPED_MODELS = ("WanModel", "CameraWanModel")   # forward_orig: tokens + per-token ops only between blocks


@dataclass(frozen=True, eq=False)
class SlotOrder:
    """Index tables of one slot layout on one device (host work, built once per layout and device)."""

    layout: BlockLayout
    gather_index: torch.Tensor   # int64 [S]: token of each slot (padding: token 0)
    slot_valid: torch.Tensor     # bool [S]
    token_to_slot: torch.Tensor  # int64 [L]
    real_slots: torch.Tensor     # int64 [L]: the slots holding tokens, ascending
    num_slots: int
    seq_len: int

    @classmethod
    def of(cls, layout: BlockLayout, device: torch.device) -> "SlotOrder":
        def build():
            perm = layout.perm.to(device=device, dtype=torch.int64)
            valid = perm >= 0
            slots = torch.arange(perm.numel(), device=device)
            token_to_slot = torch.empty(int(layout.seq_len), dtype=torch.int64, device=device)
            token_to_slot[perm[valid]] = slots[valid]
            return cls(layout, perm.clamp_min(0), valid, token_to_slot, slots[valid], int(perm.numel()),
                       int(layout.seq_len))

        return cached(layout, ("slot_order", str(device)), build)

    @property
    def num_pad(self) -> int:
        return self.num_slots - self.seq_len

    def to_slots(self, x: torch.Tensor, dim: int = 1, zero_pad: bool = True) -> torch.Tensor:
        """Tokens ``[..., L, ...]`` (along ``dim``) -> slots ``[..., S, ...]``; padding slots zero (or token 0)."""
        out = x.index_select(dim, self.gather_index)
        if zero_pad and self.num_pad:
            shape = [1] * x.ndim
            shape[dim] = self.num_slots
            out = torch.where(self.slot_valid.view(shape), out, 0)
        return out

    def to_tokens(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Slots -> tokens in the original order (padding slots dropped)."""
        return x.index_select(dim, self.token_to_slot)

    def _compact(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.index_select(dim, self.real_slots) if self.num_pad else x

    def _expand(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if not self.num_pad:
            return x
        shape = list(x.shape)
        shape[dim] = self.num_slots
        return x.new_zeros(shape).index_copy(dim, self.real_slots, x)

    def dense(self, fn, args: tuple, kwargs: dict) -> torch.Tensor:
        """Dense self-attention ``fn(q, k, v, heads, ...)`` of slot-ordered q/k/v, exactly as in token order:
        on the real slots only (a permutation of the tokens; padding never acts as a key), padding rows of
        the output zero. A call of another length (already logged as a fallback) passes through."""
        dim = 2 if kwargs.get("skip_reshape") else 1
        q, k, v = args[:3]
        if q.shape[dim] != self.num_slots or k.shape[dim] != self.num_slots:
            return fn(*args, **kwargs)
        rest, kwargs = list(args[3:]), dict(kwargs)
        mask = kwargs.get("mask", rest[1] if len(rest) > 1 else None)
        if mask is not None:   # a mask in token order (``masked`` fallback): to the compacted order
            tokens = self.gather_index[self.real_slots]
            mask = mask.index_select(-1, tokens)
            mask = mask.index_select(-2, tokens) if mask.shape[-2] == self.seq_len else mask
            if "mask" in kwargs:
                kwargs["mask"] = mask
            else:
                rest[1] = mask
        out = fn(*(self._compact(t, dim) for t in (q, k, v)), *rest, **kwargs)
        return self._expand(out, 2 if kwargs.get("skip_output_reshape") else 1)


def plan_slot_order(enabled: bool, model, kernel, dense_step: bool) -> tuple[SlotOrder | None, str | None]:
    """(the SlotOrder this model call runs in, or None and why not; None reason: by design, nothing to log).
    Host work, in the APPLY_MODEL wrapper."""
    if not enabled or dense_step:
        return None, None
    if kernel is None:
        return None, "the sparse kernel could not be prepared before the model call (the model does not say its heads or dtype)"
    dm = getattr(model, "diffusion_model", model)
    name = type(dm).__name__
    if name not in GROUPED_MODELS:
        return None, (f"{name} adds per-token inputs inside its forward (VACE hints, Animate face/pose, audio) "
                      "that the grouping does not permute")
    if not isinstance(getattr(dm, "forward_orig", None), GroupedForward):
        return None, "diffusion_model.forward_orig is not IASA's (another patch replaced it after IASA Sparse Attention)"
    kernel.prepare_slots()
    return SlotOrder.of(kernel.slot_layout, kernel.spec.device), None


class GroupedForward:
    """Object patch of ``diffusion_model.forward_orig``: freqs into slot order once, the call marked grouped.

    ``note(transformer_options, route, detail)`` records what happened (the patch counts and logs it)."""

    def __init__(self, forward, state_of, note):
        self.forward = forward
        self.state_of = state_of   # transformer_options -> CallState | None
        self.note = note

    def __call__(self, x, t, *args, transformer_options={}, **kwargs):  # noqa: B006 (forward_orig's signature)
        state = self.state_of(transformer_options)
        order = getattr(state, "slot_order", None)
        freqs = kwargs.get("freqs")
        if order is not None:
            why = None
            if t.numel() != t.shape[0]:
                why = f"per-token timesteps (t of shape {tuple(t.shape)}, e.g. Wan 2.2 TI2V) modulate tokens by position"
            elif freqs is None or freqs.ndim < 2 or freqs.shape[1] != order.seq_len:
                why = (f"the RoPE frequencies do not cover the {order.seq_len} tokens of the grid "
                       f"({None if freqs is None else tuple(freqs.shape)})")
            if why is None:
                kwargs["freqs"] = order.to_slots(freqs, zero_pad=False)
                transformer_options = {**transformer_options, GROUPED_KEY: order}
                self.note(transformer_options, "grouped", None)
            else:
                self.note(transformer_options, "ungrouped", why)
        return self.forward(x, t, *args, transformer_options=transformer_options, **kwargs)


class GroupedBlock:
    """``patches_replace["dit"][("double_block", i)]`` of the first and/or last block: x into slot order
    before the first block, back to token order after the last; chains a replace that was there before."""

    def __init__(self, first: bool, last: bool, previous=None):
        self.first, self.last, self.previous = bool(first), bool(last), previous

    def __call__(self, args: dict, extra: dict) -> dict:
        order: SlotOrder | None = (args.get("transformer_options") or {}).get(GROUPED_KEY)
        if order is not None and self.first:
            x = args["img"]
            if x.shape[1] != order.seq_len:
                raise RuntimeError(f"IASA sparse attention: the first block got {x.shape[1]} tokens, the RoPE "
                                   f"frequencies and the grid {order.seq_len}; report the model type")
            args = {**args, "img": order.to_slots(x)}
        out = self.previous(args, extra) if self.previous is not None else extra["original_block"](args)
        if order is not None and self.last:
            out = {**out, "img": order.to_tokens(out["img"])}
        return out


def install_grouping(m, state_of, note) -> None:
    """Register :class:`GroupedForward` and the first/last :class:`GroupedBlock` on ModelPatcher ``m``."""
    dm = m.model.diffusion_model
    m.add_object_patch("diffusion_model.forward_orig", GroupedForward(m.get_model_object("diffusion_model.forward_orig"),
                                                                      state_of, note))
    n = len(dm.blocks)
    replaces = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for i in sorted({0, n - 1}):
        previous = replaces.get(("double_block", i))
        if isinstance(previous, GroupedBlock):   # applied twice: keep what the first wrapped
            previous = previous.previous
        m.set_model_patch_replace(GroupedBlock(i == 0, i == n - 1, previous), "dit", "double_block", i)
