"""The input-aware token rule in slot order: the mask *inside* blocks that hold several groups.

A packed layout (``layout.build_region_layout(..., packing="frame")``) lets the region groups of one
latent frame share blocks, so a selected block pair may hold token pairs the pattern forbids (a face
query and a hand key of another frame). :class:`RegionSlotMask` is the exact rule those partial blocks
apply, evaluated on slot indices (FlexAttention ``mask_mod`` style, after xformers' ``attn_bias``
objects: a small class with ``materialize()``)::

    allowed(q, k) = key k is a real token and (global(q) or global(k) or frame(q) == frame(k)
                    or (label(q) == label(k) > 0 and frame_select[frame(q), frame(k)]))

With ``reference_itself`` a global query attends to global keys only (``global(q)`` becomes
``global(q) and global(k)``): the reference tokens no longer read the video (see
``pose_layout.REFERENCE_ATTENDS``).

It is the rule of tests/unit/attention_reference.py, indexed by slot instead of token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GLOBAL_SLOT = -1   # slot_frame of a global (reference / extra) token
PAD_SLOT = -2      # slot_frame of a padding slot


@dataclass(frozen=True)
class RegionSlotMask:
    """Per-slot frame and label plus the frame selection; everything a kernel needs for the in-block mask.

    ``slot_frame`` int64 ``[S]``: latent video frame of the slot's token, :data:`GLOBAL_SLOT` for global
    tokens, :data:`PAD_SLOT` for padding. ``slot_label`` int64 ``[S]``: region label (0 background), -1 for
    global and padding slots. ``frame_select`` bool ``[T, T]`` (rows: query frames).
    """

    slot_frame: torch.Tensor
    slot_label: torch.Tensor
    frame_select: torch.Tensor
    reference_itself: bool = False

    def __post_init__(self):
        S = self.slot_frame.shape
        if self.slot_frame.ndim != 1 or self.slot_label.shape != S:
            raise ValueError(f"RegionSlotMask: slot_frame {tuple(S)} and slot_label {tuple(self.slot_label.shape)} "
                             "must be the same 1-D shape")
        T = self.frame_select.shape
        # The frame range is checked on host tensors only (no device sync when moved with .to()).
        on_host = self.slot_frame.device.type == "cpu" and self.slot_frame.numel()
        if len(T) != 2 or T[0] != T[1] or (on_host and int(self.slot_frame.max()) >= T[0]):
            raise ValueError(f"RegionSlotMask: frame_select {tuple(T)} must be [T, T] covering every slot frame")

    @classmethod
    def from_slots(cls, perm: np.ndarray, token_frame: np.ndarray, token_label: np.ndarray,
                   frame_select: np.ndarray, reference_itself: bool = False) -> "RegionSlotMask":
        """From a slot permutation (``-1`` padding) and per-token frame (-1 global) and label."""
        perm = np.asarray(perm, np.int64)
        real = perm >= 0
        src = np.where(real, perm, 0)
        frame = np.where(real, np.asarray(token_frame, np.int64)[src], PAD_SLOT)
        label = np.where(real & (frame >= 0), np.asarray(token_label, np.int64)[src], -1)
        return cls(torch.from_numpy(frame), torch.from_numpy(label),
                   torch.from_numpy(np.ascontiguousarray(frame_select, dtype=bool)), bool(reference_itself))

    @property
    def num_slots(self) -> int:
        return int(self.slot_frame.numel())

    def to(self, device: torch.device | str | None) -> "RegionSlotMask":
        return RegionSlotMask(self.slot_frame.to(device), self.slot_label.to(device), self.frame_select.to(device),
                              self.reference_itself)

    def allowed(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """bool, broadcast of slot indices ``q`` and ``k`` (tensors on this mask's device): the rule above.
        Usable as (the body of) a FlexAttention ``mask_mod``."""
        fq, fk = self.slot_frame[q], self.slot_frame[k]
        lq, lk = self.slot_label[q], self.slot_label[k]
        glob = (fk == GLOBAL_SLOT) if self.reference_itself else (fq == GLOBAL_SLOT) | (fk == GLOBAL_SLOT)
        cross = (lq == lk) & (lq > 0) & self.frame_select[fq.clamp(min=0), fk.clamp(min=0)]
        return (fk != PAD_SLOT) & (glob | (fq == fk) | cross)

    def materialize(self, device: torch.device | str | None = None) -> torch.Tensor:
        """bool ``[S, S]`` (rows: query slots). O(S^2): tests and small grids only."""
        m = self.to(device)
        s = torch.arange(self.num_slots, device=m.slot_frame.device)
        return m.allowed(s[:, None], s[None, :])

    to_dense = materialize

    def block_stats(self, block_size: int) -> tuple[np.ndarray, ...]:
        """Per block: (frame or -1 global / -3 mixed, label or -3 mixed, has_padding), host arrays."""
        nb = self.num_slots // block_size
        f = self.slot_frame.cpu().numpy().reshape(nb, block_size)
        lab = self.slot_label.cpu().numpy().reshape(nb, block_size)
        real = f != PAD_SLOT
        big = np.iinfo(np.int64).max
        lo = np.where(real, f, big).min(1)
        hi = np.where(real, f, -big).max(1)
        frame = np.where(lo == hi, lo, -3)
        llo = np.where(real, lab, big).min(1)
        lhi = np.where(real, lab, -big).max(1)
        label = np.where(llo == lhi, llo, -3)
        return frame, label, ~real.all(1)

    def full_block_pairs(self, block_size: int) -> np.ndarray:
        """bool ``[nb, nb]``: block pairs where the rule allows every (query slot, real key slot) pair and the
        key block has no padding, so a kernel may skip the mask there (FlexAttention's *full* blocks).
        Conservative: a pair not marked full is evaluated with :meth:`allowed`, which is always exact."""
        frame, label, pad = self.block_stats(block_size)
        sel = self.frame_select.cpu().numpy()
        glob = frame == GLOBAL_SLOT
        video = frame >= 0
        fi, fj = np.clip(frame, 0, None)[:, None], np.clip(frame, 0, None)[None, :]
        same = video[:, None] & video[None, :] & (frame[:, None] == frame[None, :])
        cross = (video[:, None] & video[None, :] & (label[:, None] == label[None, :]) & (label[:, None] > 0)
                 & sel[fi, fj])
        glob_pairs = glob[None, :] if self.reference_itself else glob[:, None] | glob[None, :]
        return (glob_pairs | same | cross) & ~pad[None, :]

    def allowed_pairs(self) -> int:
        """Number of allowed (query, key) pairs of real tokens, in closed form from group sizes."""
        f = self.slot_frame.cpu().numpy()
        lab = self.slot_label.cpu().numpy()
        T = int(self.frame_select.shape[0])
        L = int((f != PAD_SLOT).sum())
        n_video = int((f >= 0).sum())
        video = f >= 0
        per_frame = np.bincount(f[video], minlength=T).astype(np.int64)
        n_lab = int(lab.max()) + 1 if video.any() else 1
        per_group = np.bincount(f[video] * n_lab + lab[video], minlength=T * n_lab).reshape(T, n_lab).astype(np.int64)
        per_group[:, 0] = 0                                                    # background: no cross-frame
        off_diag = self.frame_select.cpu().numpy() & ~np.eye(T, dtype=bool)
        cross = int(np.einsum("fr,gr,fg->", per_group, per_group, off_diag.astype(np.int64)))
        reference_rows = (L - n_video) * n_video if self.reference_itself else 0   # global queries, video keys
        return L * L - n_video * n_video + int((per_frame ** 2).sum()) + cross - reference_rows

    def tables(self) -> "SlotRuleTables":
        """The same rule as int32 lookup tables (:class:`SlotRuleTables`), for kernels that compile ``mask_mod``
        into their own language (FlexAttention's FLASH backend: CuTe DSL)."""
        return SlotRuleTables.of(self)


# pair_code values: what a (query frame, key frame) pair needs to be allowed
PAIR_NEVER, PAIR_ALWAYS, PAIR_SAME_REGION = 0, 1, 2


@dataclass(frozen=True)
class SlotRuleTables:
    """:class:`RegionSlotMask`'s rule as four int32 tables and one lookup chain, with no boolean tensors, no
    clamping and no 2-D indexing, so a ``mask_mod`` built on it lowers to any kernel language::

        code = pair_code[frame_code[q] * width + frame_code[k]]
        allowed(q, k) = code == ALWAYS or (code == SAME_REGION and label_q[q] == label_k[k])

    ``frame_code``: the slot's video frame, ``T`` for a global slot, ``T + 1`` for padding (``width = T + 2``).
    ``pair_code`` ``[width * width]``: ALWAYS for a global key, for a global query (key not padding; unless
    ``reference_itself``) and for the same
    frame, SAME_REGION for the selected cross-frame pairs, NEVER otherwise (every padding key).
    ``label_q`` / ``label_k``: the region label; background slots get -1 as queries and -2 as keys, so they
    never match across frames (the rule's ``label > 0``).
    """

    frame_code: torch.Tensor
    label_q: torch.Tensor
    label_k: torch.Tensor
    pair_code: torch.Tensor
    width: int

    @classmethod
    def of(cls, mask: RegionSlotMask) -> "SlotRuleTables":
        frame = mask.slot_frame.cpu()
        label = mask.slot_label.cpu()
        T = int(mask.frame_select.shape[0])
        glob, pad = T, T + 1
        code = torch.where(frame == GLOBAL_SLOT, glob, torch.where(frame == PAD_SLOT, pad, frame))
        pair = torch.full((T + 2, T + 2), PAIR_NEVER, dtype=torch.int32)
        pair[:T, :T][mask.frame_select.cpu()] = PAIR_SAME_REGION
        pair[torch.arange(T), torch.arange(T)] = PAIR_ALWAYS
        if not mask.reference_itself:
            pair[glob, :pad] = PAIR_ALWAYS
        pair[:, glob] = PAIR_ALWAYS
        pair[:, pad] = PAIR_NEVER
        real_label = label > 0
        return cls(code.to(torch.int32), torch.where(real_label, label, -1).to(torch.int32),
                   torch.where(real_label, label, -2).to(torch.int32), pair.flatten().contiguous(), T + 2)

    def to(self, device: torch.device | str | None) -> "SlotRuleTables":
        return SlotRuleTables(self.frame_code.to(device), self.label_q.to(device), self.label_k.to(device),
                              self.pair_code.to(device), self.width)

    def allowed(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """bool, broadcast of slot indices ``q`` and ``k``: equal to ``RegionSlotMask.allowed`` (tested)."""
        code = self.pair_code[self.frame_code[q] * self.width + self.frame_code[k]]
        return (code == PAIR_ALWAYS) | ((code == PAIR_SAME_REGION) & (self.label_q[q] == self.label_k[k]))
