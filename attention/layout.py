"""Block layout of a block-sparse attention pattern (after FlexAttention's ``BlockMask``).

Tokens are first permuted into ``slots``; padding slots hold ``-1``. The pattern is a list of key
blocks per query block. :class:`BlockLayout` is the contract the kernels (attention/kernels.py)
consume, and it describes itself the way torch's ``BlockMask`` and xformers' ``materialize()`` do:
:meth:`~BlockLayout.to_dense` (block matrix), :meth:`~BlockLayout.token_mask` (the exact token mask
every kernel must compute), :meth:`~BlockLayout.density` (what it costs, :class:`DensityReport`) and ``str()``.

Builders:
- :func:`build_region_layout`: the input-aware pattern (paper Eq. 1-3) from region labels and a
  frame selection. Two packings of the same token mask (tests/unit/attention_reference.py checks both):
  ``"group"``: every (frame, region) group is padded to whole blocks, so the block pattern alone is
  exact; ``"frame"`` (default): the groups of a latent frame share blocks and only each frame (and the
  global group) is padded, and a :class:`~attention.slot_mask.RegionSlotMask` masks inside the partial
  blocks. On Wan 480p x 81 the second does about 1.2x the exact work instead of 1.8x
  (``python iasa_cli.py bench.attention --layout-density``).
- :func:`random_layout`, :func:`struct_layout`: benchmark patterns of ``gpu-attention.md`` C.1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..pose.regions import LABELS
from .grid import TokenGrid
from .slot_mask import RegionSlotMask

# Slot order of the groups inside a latent frame.
GROUP_ORDER = ("face", "left_hand", "right_hand", "arms", "torso", "background")
GLOBAL_REGION = -1  # block_region / block_frame value of the global (reference / extra token) group


@dataclass
class BlockLayout:
    """A block-sparse pattern over a permuted, padded token order.

    - ``perm[s]``: token index held by slot ``s`` (0 <= s < num_blocks*block_size), ``-1`` for padding.
    - ``kv_num_blocks[h, i]``: number of key blocks query block ``i`` attends to (h = head or 0 when
      the pattern is shared by all heads; shape ``[Hl, nb]`` with ``Hl`` 1 or the head count).
    - ``kv_indices[h, i, :kv_num_blocks[h, i]]``: those key blocks, ascending; entries past the count
      are ignored (filled with 0).
    Every query block attends to at least one block holding a real token of its own, so no real
    query row is empty.
    - ``slot_mask``: None when the block pattern alone is the token mask; else the token rule that
      selected block pairs apply inside (packed layouts, shared by all heads).
    - ``padded``: for a layout with a ``slot_mask``, the same token mask with every block holding one
      group (no in-block rule), for kernels that cannot mask inside a block (xformers).
    """

    block_size: int
    seq_len: int                 # real tokens L
    perm: torch.Tensor           # int64 [num_blocks * block_size]
    kv_num_blocks: torch.Tensor  # int32 [Hl, nb]
    kv_indices: torch.Tensor     # int32 [Hl, nb, kmax]
    slot_mask: RegionSlotMask | None = None
    padded: "BlockLayout | None" = None

    def __post_init__(self):
        if self.slot_mask is not None and self.slot_mask.num_slots != self.perm.numel():
            raise ValueError(f"slot_mask: {self.slot_mask.num_slots} slots for a layout of {self.perm.numel()}")

    @property
    def num_blocks(self) -> int:
        return int(self.perm.numel() // self.block_size)

    def to_dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """bool ``[Hl, nb, nb]``: query block i attends to key block j (as ``BlockMask.to_dense()``)."""
        cnt = self.kv_num_blocks.to(device=device, dtype=torch.int64)
        idx = self.kv_indices.to(device=device, dtype=torch.int64)
        nb = self.num_blocks
        valid = torch.arange(idx.shape[-1], device=idx.device) < cnt[..., None]
        # Entries past the count go to a spare column nb that is dropped.
        dense = torch.zeros(idx.shape[0], nb, nb + 1, dtype=torch.bool, device=idx.device)
        dense.scatter_(2, torch.where(valid, idx, nb), True)
        return dense[..., :nb].contiguous()

    def slot_of_token(self, device: torch.device | str | None = None) -> torch.Tensor:
        """int64 ``[L]``: the slot holding each real token (raises if ``perm`` is not a padded permutation)."""
        perm = self.perm.to(device=device)
        real = perm >= 0
        tokens = perm[real]
        L = int(self.seq_len)
        if tokens.numel() != L or not torch.equal(torch.sort(tokens).values, torch.arange(L, device=perm.device)):
            raise ValueError(f"layout.perm: must hold each of the {L} tokens exactly once")
        out = torch.empty(L, dtype=torch.int64, device=perm.device)
        out[tokens] = torch.nonzero(real).squeeze(1)
        return out

    def block_of_token(self, device: torch.device | str | None = None) -> torch.Tensor:
        """int64 ``[L]``: the block holding each real token."""
        return self.slot_of_token(device) // self.block_size

    def token_mask(self, device: torch.device | str | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """bool ``[Hl, L, L]`` (rows: queries, original token order): token t attends to token u iff the
        layout selects u's block for t's block and the ``slot_mask`` (if any) allows the pair — what every
        kernel computes (xformers' ``materialize()``). ``rows``: only these query tokens (``[Hl, n, L]``)."""
        slot = self.slot_of_token(device)
        q_slot = slot if rows is None else slot[rows.to(slot.device)]
        dense = self.to_dense(device)
        mask = dense[:, q_slot // self.block_size][:, :, slot // self.block_size]
        if self.slot_mask is not None:
            mask &= self.slot_mask.to(slot.device).allowed(q_slot[:, None], slot[None, :])
        return mask

    def density(self, region_tokens: dict[str, int] | None = None) -> "DensityReport":
        """What the layout computes, as fractions of dense ``L x L`` attention (means over head patterns)."""
        mask = self.to_dense().double()                                      # [Hl, nb, nb]
        n = (self.perm.view(self.num_blocks, self.block_size) >= 0).sum(dim=1).double()
        L = float(self.seq_len)
        kept = mask.sum(dim=(1, 2)).mean().item()
        if self.slot_mask is not None:
            token_pairs = float(self.slot_mask.allowed_pairs())
        else:
            token_pairs = torch.einsum("hij,i,j->h", mask, n, n).mean().item()
        return DensityReport(seq_len=self.seq_len, block_size=self.block_size, num_blocks=self.num_blocks,
                             kept_block_pairs=kept, block_density=kept * self.block_size ** 2 / L ** 2,
                             token_density=token_pairs / L ** 2, padding_slots=int(self.perm.numel() - self.seq_len),
                             region_tokens=dict(region_tokens or {}))

    def __str__(self) -> str:
        heads = self.kv_num_blocks.shape[0]
        return (f"BlockLayout({heads} head pattern{'s' if heads > 1 else ''}; {self.density().summary()}; "
                f"key blocks per query block {int(self.kv_num_blocks.min())}..{int(self.kv_num_blocks.max())})")


@dataclass
class BlockGroups:
    """What each block of a region layout holds: latent video frame (-1: global group) and regions.

    ``block_region`` is the block's only label in a ``"group"`` packing, its most frequent one in a
    ``"frame"`` packing (for pictures); ``block_labels`` has bit ``1 << label`` set for every label present.
    """

    block_frame: np.ndarray   # int64 [nb]
    block_region: np.ndarray  # int64 [nb], pose.regions.LABELS value or -1
    block_tokens: np.ndarray  # int64 [nb], real tokens in the block
    block_labels: np.ndarray  # int64 [nb], bit set of the labels present (0 for the global group)


# ---- generic helpers ---------------------------------------------------------------------------

def layout_from_block_mask(block_mask: torch.Tensor | np.ndarray, perm: torch.Tensor, block_size: int,
                           seq_len: int) -> BlockLayout:
    """BlockLayout from a bool block mask ``[nb, nb]`` or ``[Hl, nb, nb]`` (rows: query blocks)."""
    # numpy: these arrays are small, and torch's intra-op threads only add latency here.
    m = block_mask.cpu().numpy() if isinstance(block_mask, torch.Tensor) else np.asarray(block_mask)
    m = m.astype(bool, copy=False)
    if m.ndim == 2:
        m = m[None]
    nb = m.shape[-1]
    if m.ndim != 3 or m.shape[-2] != nb or perm.numel() != nb * block_size:
        raise ValueError(f"block_mask: shape {m.shape} does not match {perm.numel()} slots of block {block_size}")
    counts = m.sum(axis=-1)
    if (counts == 0).any():
        raise ValueError("block_mask: a query block attends to no key block; keep at least the diagonal")
    kmax = int(counts.max())
    # Stable sort of "not selected" puts the selected blocks first, in ascending order.
    order = np.argsort(~m, axis=-1, kind="stable")[..., :kmax]
    valid = np.arange(kmax)[None, None, :] < counts[..., None]
    kv_indices = np.where(valid, order, 0).astype(np.int32)
    return BlockLayout(block_size=int(block_size), seq_len=int(seq_len), perm=perm.to(torch.int64),
                       kv_num_blocks=torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int32)),
                       kv_indices=torch.from_numpy(np.ascontiguousarray(kv_indices)))


def _identity_perm(seq_len: int, block_size: int) -> torch.Tensor:
    nb = -(-seq_len // block_size)
    perm = torch.full((nb * block_size,), -1, dtype=torch.int64)
    perm[:seq_len] = torch.arange(seq_len)
    return perm


# ---- the input-aware layout --------------------------------------------------------------------

PACKINGS = ("frame", "group")


def region_block_mask(groups: BlockGroups, frame_select: np.ndarray, reference_itself: bool = False) -> np.ndarray:
    """bool [nb, nb] block pattern: same frame dense, blocks sharing a region across selected frames,
    global dense (with ``reference_itself`` global query blocks keep only global key blocks). With several
    groups per block it keeps every block pair holding an allowed token pair."""
    bf, bits = groups.block_frame, groups.block_labels
    glob = bf < 0
    f = np.where(glob, 0, bf)
    same_frame = (bf[:, None] == bf[None, :]) & ~glob[:, None]
    region_bits = bits & ~np.int64(1 << LABELS["background"])
    cross = ((region_bits[:, None] & region_bits[None, :]) != 0) & frame_select[f[:, None], f[None, :]]
    cross &= ~glob[:, None] & ~glob[None, :]
    glob_pairs = glob[None, :] if reference_itself else glob[:, None] | glob[None, :]   # global keys; queries too
    return same_frame | cross | glob_pairs


def build_region_layout(labels: np.ndarray, frame_select: np.ndarray, grid: TokenGrid, block_size: int,
                        packing: str = "frame", reference_itself: bool = False) -> tuple[BlockLayout, BlockGroups]:
    """The input-aware block layout.

    ``labels`` uint8 [T, hp, wp] region label per video token (T = ``grid.video_frames``),
    ``frame_select`` bool [T, T] (diagonal set). Slots: first the global tokens (ascending, one group),
    then per latent frame the groups in :data:`GROUP_ORDER`. ``packing="group"`` pads each group to whole
    blocks (empty groups take no block); ``"frame"`` pads only each frame, attaches the in-block rule
    (``layout.slot_mask``) and the ``"group"`` layout as ``layout.padded``. Vectorised: 480p x 81 frames
    builds in milliseconds.
    """
    labels = np.asarray(labels)
    frame_select = np.asarray(frame_select, bool)
    T = grid.video_frames
    if labels.shape != (T, grid.hp, grid.wp):
        raise ValueError(f"labels: shape {labels.shape} does not match the grid {(T, grid.hp, grid.wp)}")
    if frame_select.shape != (T, T):
        raise ValueError(f"frame_select: shape {frame_select.shape}, expected {(T, T)}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if packing not in PACKINGS:
        raise ValueError(f"packing: unknown {packing!r}; choose from {PACKINGS}")
    n_groups = len(GROUP_ORDER)
    rank_of_label = np.zeros(max(LABELS.values()) + 1, np.int64)
    for r, name in enumerate(GROUP_ORDER):
        rank_of_label[LABELS[name]] = r

    flat = labels.reshape(T, -1).astype(np.int64)
    key = (np.arange(T)[:, None] * n_groups + rank_of_label[flat]).ravel()       # group id per video token
    # A unit is what gets padded to whole blocks: a group, or a whole frame.
    unit = key if packing == "group" else key // n_groups
    n_units = T * n_groups if packing == "group" else T
    counts = np.bincount(unit, minlength=n_units)
    blocks = -(-counts // block_size)
    n_glob = grid.global_tokens
    glob_blocks = -(-n_glob // block_size)
    first_block = glob_blocks + np.concatenate([[0], np.cumsum(blocks)[:-1]])
    nb = glob_blocks + int(blocks.sum())

    order = np.argsort(key, kind="stable")                     # frame-major, GROUP_ORDER inside a frame
    unit_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sorted_unit = unit[order]
    within = np.arange(order.size) - unit_start[sorted_unit]
    slots = first_block[sorted_unit] * block_size + within

    perm = np.full(nb * block_size, -1, np.int64)
    perm[:n_glob] = grid.global_token_indices()
    perm[slots] = order + grid.video_token_offset

    token_frame = grid.token_frames()
    token_label = np.full(grid.seq_len, -1, np.int64)
    token_label[grid.video_token_offset: grid.video_token_offset + grid.video_tokens] = flat.ravel()
    groups = _block_groups(perm, token_frame, token_label, block_size)
    mask = region_block_mask(groups, frame_select, reference_itself)
    layout = layout_from_block_mask(mask, torch.from_numpy(perm), block_size, grid.seq_len)
    if packing == "frame" and _shares_blocks(groups):
        layout.slot_mask = RegionSlotMask.from_slots(perm, token_frame, token_label, frame_select, reference_itself)
        layout.padded, _ = build_region_layout(labels, frame_select, grid, block_size, "group", reference_itself)
    return layout, groups


def _block_groups(perm: np.ndarray, token_frame: np.ndarray, token_label: np.ndarray, block_size: int) -> BlockGroups:
    nb = perm.size // block_size
    real = (perm >= 0).reshape(nb, block_size)
    src = np.where(perm >= 0, perm, 0)
    frame = token_frame[src].reshape(nb, block_size)
    label = token_label[src].reshape(nb, block_size)
    block_frame = np.where(real, frame, np.iinfo(np.int64).max).min(1)            # a block holds one frame
    n_lab = int(token_label.max()) + 2
    hist = np.zeros((nb, n_lab), np.int64)                                         # column 0: global (-1)
    np.add.at(hist, (np.repeat(np.arange(nb), block_size)[real.ravel()], label[real] + 1), 1)
    block_region = hist.argmax(1) - 1
    present = hist[:, 1:] > 0
    block_labels = (present * (np.int64(1) << np.arange(n_lab - 1, dtype=np.int64))).sum(1)
    return BlockGroups(block_frame, block_region, real.sum(1), block_labels)


def _shares_blocks(groups: BlockGroups) -> bool:
    """True when some block holds tokens of more than one (frame, region) group (it needs a slot mask)."""
    single = (groups.block_labels & (groups.block_labels - 1)) == 0
    return not bool(single.all())


# ---- benchmark layouts -------------------------------------------------------------------------

def random_layout(seq_len: int, block_size: int, density: float, heads: int = 1, seed: int = 0) -> BlockLayout:
    """randN of gpu-attention.md C.1: per (head, query block) the diagonal plus random other blocks,
    ``round(density * nb)`` blocks in all (at least the diagonal). Identity token order."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if heads < 1 or seq_len < 1 or block_size < 1:
        raise ValueError(f"random_layout: seq_len, block_size, heads must be >= 1, got {seq_len}, {block_size}, {heads}")
    perm = _identity_perm(seq_len, block_size)
    nb = perm.numel() // block_size
    per_row = max(1, min(nb, int(round(density * nb))))
    g = torch.Generator().manual_seed(int(seed))
    score = torch.rand(heads, nb, nb, generator=g)
    score[:, torch.arange(nb), torch.arange(nb)] = -1.0  # diagonal always first
    pick = torch.argsort(score, dim=-1)[..., :per_row]
    mask = torch.zeros(heads, nb, nb, dtype=torch.bool)
    mask.scatter_(2, pick, True)
    return layout_from_block_mask(mask, perm, block_size, seq_len)


def struct_layout(frames: int, tokens_per_frame: int, block_size: int) -> BlockLayout:
    """"struct" of gpu-attention.md C.1 (same for every head): query block i, starting at token
    s = block_size*i in frame f = s // F at offset o, sees every key block overlapping frame f and, in
    every frame g, the key block holding token g*F + o. Identity token order."""
    F = int(tokens_per_frame)
    seq_len = int(frames) * F
    perm = _identity_perm(seq_len, block_size)
    nb = perm.numel() // block_size
    start = torch.arange(nb) * block_size
    f = start // F
    o = start - f * F
    kb = torch.arange(nb)
    lo, hi = (f * F) // block_size, ((f + 1) * F - 1) // block_size
    mask = (kb[None, :] >= lo[:, None]) & (kb[None, :] <= hi[:, None])
    same_row = (torch.arange(frames)[None, :] * F + o[:, None]) // block_size          # [nb, frames]
    mask.scatter_(1, same_row, True)
    return layout_from_block_mask(mask, perm, block_size, seq_len)


# ---- density -----------------------------------------------------------------------------------

@dataclass
class DensityReport:
    """What a layout computes, as fractions of dense ``L x L`` attention.

    ``block_density`` = kept (query block, key block) pairs x block_size^2 / L^2: the work the kernel
    does, padding included (can exceed the token density, and 1 for a dense padded layout).
    ``token_density`` = allowed real token pairs / L^2: the exact mask's density. Means over heads.
    """

    seq_len: int
    block_size: int
    num_blocks: int
    kept_block_pairs: float
    block_density: float
    token_density: float
    padding_slots: int
    region_tokens: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"L={self.seq_len}, {self.num_blocks} blocks of {self.block_size} ({self.padding_slots} padding slots), "
                f"block density {100 * self.block_density:.1f}% (with padding), "
                f"token density {100 * self.token_density:.1f}%")
