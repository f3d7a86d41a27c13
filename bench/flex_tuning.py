"""FlexAttention tile settings on the real pose layout (issue 10, item 4): which ``kernel_options`` make the
block-sparse kernel fastest, against dense cuDNN attention on the same q/k/v in the same run.

The layout is bench.realtime's: 480p x 81 frames (21 x 30 x 52 patches + 1,560 reference tokens), the synthetic
talking pose, top-k 2, causal, block 128, with both packings (``frame``: groups of a frame share blocks and are
masked inside them; ``group``: each group padded to whole blocks, no mask inside). Timed: the kernel alone on
slot-ordered ``[1, H, S, 128]`` bf16 q/k/v, as the grouped model calls it. Efficiency = dense ms / sparse ms x
density (kernel density, and the exact token density).

    python iasa_cli.py bench.flex_tuning --out bench/results/flex_tuning.json       # GPU, ~3 min
    python iasa_cli.py bench.flex_tuning --dry-run                                   # CPU, tiny shapes

Not imported by the pack at run time; its winner goes into ``attention/flex_kernel.py`` (``TUNED_OPTIONS``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attention.flex_kernel import build_block_mask, flex_kernel_options
from ..attention.kernels import QuerySpec, prepare_kernel
from ..attention.pose_layout import SparseAttentionConfig, build_pose_layout
from ..attention.token_order import SlotOrder
from ..pose.keypoints import PoseSequence
from ..pose.synthetic import talking_pose
from ..training.teacher_data import token_grid
from .attention import time_ms, versions

log = logging.getLogger(__name__)

GRID = {"block_m": (64, 128), "block_n": (64, 128), "warps": (4, 8), "stages": (2, 3)}


def pose_layout(frames: int, height: int, width: int, block: int, packing: str):
    pose = talking_pose(n_frames=frames, width=width, height=height)
    latent = (1 + (frames - 1) // 4, height // 8, width // 8)
    grid = token_grid(latent, ref_tokens=True)
    cfg = SparseAttentionConfig(top_k=2, causal=True, block_size=block, packing=packing)
    plan = build_pose_layout(PoseSequence(pose.points[:frames], pose.width, pose.height), grid, cfg)
    if plan.layout is None:
        raise RuntimeError(f"no layout for {grid.describe()}: {plan.fallback_reason}")
    return plan.layout, grid


def candidate_options(dry: bool) -> list[dict | None]:
    """None (the pack's current choice), then the grid (CUDA only)."""
    if dry:
        return [None]
    out: list[dict | None] = [None, {"USE_TMA": True}]   # Hopper's tensor memory accelerator, default tiles
    for bm, bn, w, s in itertools.product(GRID["block_m"], GRID["block_n"], GRID["warps"], GRID["stages"]):
        out.append({"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s})
    return out


def dense_ms(q, k, v, device) -> tuple[float, str]:
    """Dense attention over the real tokens: cuDNN where it runs, else the default SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type == "cuda":
        try:
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                F.scaled_dot_product_attention(q, k, v)
                return time_ms(lambda: F.scaled_dot_product_attention(q, k, v), device), "cudnn"
        except RuntimeError as exc:   # cuDNN attention unavailable for this build / shape
            log.warning("cuDNN attention failed (%s); dense baseline uses the default SDPA backend", exc)
    return time_ms(lambda: F.scaled_dot_product_attention(q, k, v), device), "sdpa_default"


def time_flex(layout, qs, ks, vs, options: dict | None, device) -> float:
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = build_block_mask(layout, device, whole_pattern_mask_mod=device.type != "cuda")
    if options is None:
        options = flex_kernel_options(layout.block_size, device)
    fn = torch.compile(flex_attention, dynamic=False) if device.type == "cuda" else flex_attention
    scale = qs.shape[-1] ** -0.5

    def run():
        return fn(qs, ks, vs, block_mask=block_mask, scale=scale, kernel_options=options) if options else \
            fn(qs, ks, vs, block_mask=block_mask, scale=scale)

    run()
    return time_ms(run, device)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--dry-run", action="store_true", help="CPU, 33 frames at 192x128, block 16")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--packings", default="frame,group")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    device = torch.device("cpu" if a.dry_run or not torch.cuda.is_available() else "cuda")
    frames, height, width, block = (33, 128, 192, 16) if a.dry_run else (81, 480, 832, 128)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    t0 = time.perf_counter()
    records, dense = [], None
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    for packing in a.packings.split(","):
        layout, grid = pose_layout(frames, height, width, block, packing)
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, a.heads, grid.seq_len, 128, generator=g, device=device, dtype=dtype) for _ in range(3))
        if dense is None:
            dense = dense_ms(q, k, v, device)
        kernel = prepare_kernel(layout, "flex", QuerySpec(device, dtype, a.heads, grid.seq_len, 128))
        kernel.prepare_slots()
        slot_layout = kernel.slot_layout
        order = SlotOrder.of(slot_layout, device)
        qs, ks, vs = (order.to_slots(t, dim=2) for t in (q, k, v))
        dens = slot_layout.density()
        for options in candidate_options(a.dry_run):
            try:
                ms = time_flex(slot_layout, qs, ks, vs, options, device)
                err = None
            except Exception as exc:   # a tile that does not fit shared memory / registers: recorded, skipped
                ms, err = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rec = {"packing": packing, "options": options or "default", "ms": ms, "error": err,
                   "dense_ms": dense[0], "dense_backend": dense[1], "kernel_density": round(dens.block_density, 4),
                   "exact_density": round(dens.token_density, 4), "tokens": grid.seq_len, "slots": order.num_slots}
            if ms:
                rec["speedup"] = round(dense[0] / ms, 3)
                rec["efficiency"] = round(dense[0] / ms * dens.block_density, 3)
                rec["efficiency_exact"] = round(dense[0] / ms * dens.token_density, 3)
            log.info("%s", rec)
            records.append(rec)
    ok = [r for r in records if r["ms"]]
    best = min(ok, key=lambda r: r["ms"]) if ok else None
    out = {"command": "python iasa_cli.py bench.flex_tuning " + " ".join(argv or []),
           "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "versions": versions(),
           "date": time.strftime("%Y-%m-%d"), "shape": {"frames": frames, "height": height, "width": width,
                                                        "heads": a.heads, "block": block},
           "records": records, "best": best, "wall_s": round(time.perf_counter() - t0, 1)}
    path = a.out or Path("/tmp/flex_tuning_dry.json" if a.dry_run else "bench/results/flex_tuning.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    log.info("best: %s; written %s", best, path)
    return out


if __name__ == "__main__":
    main()
