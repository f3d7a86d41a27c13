"""GPU benchmark of the block-sparse attention kernels against dense cuDNN SDPA (same process).

    python iasa_cli.py bench.attention --out bench/results/attention.json     # H200: < 5 minutes
    python iasa_cli.py bench.attention --dry-run                              # tiny shapes, CPU-safe
    python iasa_cli.py bench.attention --layout-density --out bench/results/attention_layout_density.json
                                                        # CPU: kernel vs exact density of the pose layouts

Full run: heads 12 and 40, head_dim 128, L = 32,760 and 75,600 (Wan 480p / 720p x 81 frames), block
128, bf16, B=1. Layouts: random per-head patterns at ~5/10/25/50 % (identity token order, as in
reference/gpu-attention.md C.1), "struct" (C.1), and a pose-derived layout ("pose"; pluggable with
``--pose-builder module:function``, the function takes ``(num_heads, seq_len, block_size)`` and returns
a ``BlockLayout``). Every record times the public call ``block_sparse_attention`` (slot gathers
included; ``ms``) and the kernel alone on slot-ordered inputs (``core_ms``), with CUDA events: 2 warm-up
calls, then repetitions filling ~0.3 s (at least 3), median. ``dense_ms`` is cuDNN SDPA on the same
q/k/v; speedup = dense_ms / ms; efficiency = speedup x density, where density = the work the kernel does
(selected block pairs x block^2 / L^2, padding slots included; ``token_density`` is the exact mask's).
The pose layout packs the region groups of a frame into shared blocks (``packing="frame"``); xformers
runs its group-padded twin, so xformers records carry that layout's density (``kernel_layout``).
``--layout-density`` only builds the pose layouts (480p and 720p x 81, with and without ``ref_conv``
reference tokens, both packings) and reports their densities: CPU work, no GPU needed.

Correctness, per record: fp32 attention of 512 sampled query rows under the exact token mask
(``max_abs_err``, ``rel_l2``); plus checks on layouts whose blocks end in padding (frames padded to
whole blocks), which exercise the xformers LSE correction: at full size and at L=8190 against masked
SDPA as well.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..attention.flex_kernel import build_block_mask, compiled_flex_attention, flex_kernel_options
from ..attention.kernels import block_sparse_attention
from ..attention.layout import BlockLayout
from ..attention.gather import take_into_pool
from ..attention.slots import slot_tables, to_slots
from . import run_info

log = logging.getLogger("bench.attention")

GRIDS = {  # seq_len -> (latent frames, token rows, token cols, pixel height, pixel width)
    32760: (21, 30, 52, 480, 832),
    75600: (21, 45, 80, 720, 1280),
    240: (5, 6, 8, 96, 128),  # dry run
}
# frame length of the padded-block correctness layouts (not a multiple of the block size)
CHECK_FRAME_LEN = {32760: 1560, 75600: 3600, 8190: 390, 240: 40}


# ---- layouts -----------------------------------------------------------------------------------

def layout_module():
    from ..attention import layout

    return layout


def random_layout(seq_len: int, block_size: int, density: float, heads: int, seed: int) -> BlockLayout:
    """Per-head random pattern; ``attention.layout.random_layout`` when present."""
    return layout_module().random_layout(seq_len, block_size, density, heads=heads, seed=seed)


def padded_random_layout(seq_len: int, frame_len: int, block_size: int, density: float, heads: int, seed: int) -> BlockLayout:
    """Frames of ``frame_len`` tokens padded to whole blocks (blocks end in padding), random per-head pattern."""
    parts = []
    for start in range(0, seq_len, frame_len):
        n = min(frame_len, seq_len - start)
        parts += [torch.arange(start, start + n), torch.full(((-n) % block_size,), -1)]
    perm = torch.cat(parts)
    nb = perm.numel() // block_size
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(heads, nb, nb, generator=g) < density
    mask |= torch.eye(nb, dtype=torch.bool)
    return layout_module().layout_from_block_mask(mask, perm, block_size, seq_len)


def struct_layout(seq_len: int, block_size: int) -> BlockLayout:
    frames, hp, wp, _, _ = GRIDS[seq_len]
    return layout_module().struct_layout(frames, hp * wp, block_size)


def builtin_pose_plan(video_seq_len: int, block_size: int, ref_conv: bool = False, packing: str = "frame"):
    """Synthetic talking upper body (pose/synthetic.py) through ``build_pose_layout`` (a ``PoseLayout``) on the
    grid of ``GRIDS[video_seq_len]``; ``ref_conv`` adds one frame of reference tokens before the video."""
    from ..attention.grid import TokenGrid
    from ..attention.pose_layout import SparseAttentionConfig, build_pose_layout
    from ..pose.synthetic import talking_pose

    frames, hp, wp, height, width = GRIDS[video_seq_len]
    grid = TokenGrid(video_frames=frames, hp=hp, wp=wp, ref_tokens_before=hp * wp if ref_conv else 0)
    pose = talking_pose(n_frames=(frames - 1) * 4 + 1, width=width, height=height)
    built = build_pose_layout(pose, grid, SparseAttentionConfig(block_size=block_size, packing=packing))
    if built.layout is None:
        raise RuntimeError(f"pose layout fell back to dense: {built.fallback_reason}")
    return built


def builtin_pose_layout(num_heads: int, seq_len: int, block_size: int) -> BlockLayout:
    """The bench's pose layout (``builtin_pose_plan``, no reference tokens)."""
    return builtin_pose_plan(seq_len, block_size).layout


def layout_density_records(seq_lens: list[int], block_size: int) -> list[dict]:
    """Kernel (work, padding included) and exact density of the pose layouts, per grid, ``ref_conv`` and
    packing; ``ratio`` = kernel / exact. Layout construction only: runs on CPU."""
    records = []
    for seq_len in seq_lens:
        for ref_conv in (False, True):
            for packing in ("frame", "group"):
                t0 = time.perf_counter()
                plan = builtin_pose_plan(seq_len, block_size, ref_conv, packing)
                d = plan.density
                records.append({
                    "video_seq_len": seq_len, "seq_len": d.seq_len, "ref_conv": ref_conv, "packing": packing,
                    "block_size": block_size, "num_blocks": d.num_blocks, "padding_slots": d.padding_slots,
                    "in_block_mask": plan.layout.slot_mask is not None,
                    "kernel_density": round(d.block_density, 5), "exact_density": round(d.token_density, 5),
                    "ratio": round(d.block_density / d.token_density, 4),
                    "build_s": round(time.perf_counter() - t0, 3)})
                r = records[-1]
                print(f"L={r['seq_len']:<6d} ref_conv={str(ref_conv):5s} packing={packing:5s} kernel "
                      f"{100 * r['kernel_density']:.2f} % exact {100 * r['exact_density']:.2f} % "
                      f"ratio {r['ratio']:.3f} ({r['num_blocks']} blocks, {r['padding_slots']} padding slots)",
                      flush=True)
    return records


def load_pose_builder(spec: str) -> Callable[[int, int, int], BlockLayout]:
    if spec == "builtin":
        return builtin_pose_layout
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"--pose-builder must be 'builtin' or 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


def block_density(layout: BlockLayout) -> float:
    """Work the kernel does, padding slots included, as a fraction of dense L x L attention."""
    return layout.density().block_density


def token_density(layout: BlockLayout) -> float:
    """Allowed real (query, key) token pairs / L^2, mean over head patterns: the exact mask's density."""
    return layout.density().token_density


def kernel_layout(kernel: str, layout: BlockLayout) -> BlockLayout:
    """The layout ``kernel`` runs (xformers: the group-padded twin of a packed layout)."""
    if kernel == "xformers":
        from ..attention.kernels import xformers_layout

        return xformers_layout(layout)
    return layout


# ---- timing and references ---------------------------------------------------------------------

def time_ms(fn: Callable[[], object], device: torch.device, target_s: float = 0.3, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` after warm-up (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    cuda = device.type == "cuda"
    spent = 0.0
    while len(times) < 3 or (spent < target_s and len(times) < 100):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        spent += ms / 1e3
    return statistics.median(times)


def dense_fn(q, k, v) -> Callable[[], torch.Tensor]:
    if q.device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def run():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)

        return run
    return lambda: F.scaled_dot_product_attention(q, k, v)


def sample_rows(seq_len: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(seq_len, generator=g)[: min(n, seq_len)].sort().values


def reference_rows(q, k, v, layout: BlockLayout, rows: torch.Tensor) -> torch.Tensor:
    """fp32 masked attention of the query tokens ``rows`` (original order), ``[H, n, D]``, batch 0."""
    device = q.device
    rows = rows.to(device)
    mask = layout.token_mask(device, rows=rows)                      # [Hl, n, L], slot rule included
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = []
    for h in range(q.shape[1]):
        allowed = mask[h if mask.shape[0] > 1 else 0]
        s = (q[0, h, rows].float() @ k[0, h].float().T) * scale
        s = s.masked_fill(~allowed, float("-inf"))
        out.append(torch.softmax(s, -1) @ v[0, h].float())
    return torch.stack(out)


def errors(out: torch.Tensor, ref_rows: torch.Tensor, rows: torch.Tensor) -> tuple[float, float]:
    got = out[0][:, rows.to(out.device)].float()
    diff = got - ref_rows
    return float(diff.abs().max()), float(diff.norm() / ref_rows.norm())


def core_fn(kernel: str, q, k, v, layout: BlockLayout) -> Callable[[], object] | None:
    """The kernel alone on slot-ordered inputs (no gathers, no LSE correction)."""
    if kernel in ("flex", "flash"):
        backend = "FLASH" if kernel == "flash" else "TRITON"
        tables = slot_tables(layout, q.device)
        qs, ks, vs = (to_slots(x, tables) for x in (q, k, v))
        bm = build_block_mask(layout, q.device, backend=backend)
        fn = compiled_flex_attention()
        options = flex_kernel_options(layout.block_size, q.device, backend)
        return lambda: fn(qs, ks, vs, block_mask=bm, kernel_options=options)
    if kernel == "xformers":
        from ..attention.xformers_compat import paged_splitk_op
        from ..attention.xformers_paged import build_paged_plan, xformers_attend

        H, D = q.shape[1], q.shape[-1]
        layout = kernel_layout(kernel, layout)
        plan = build_paged_plan(layout, H, q.device)
        tables = slot_tables(layout, q.device)
        qs = to_slots(q[0], tables)
        pool_k, pool_v = (take_into_pool(x[0], tables.gather_index, tables.slot_valid, layout.block_size)
                          for x in (k, v))
        attend = xformers_attend(paged_splitk_op(layout.block_size))
        scale = 1.0 / math.sqrt(D)

        def run():
            for c in plan.chunks:
                attend(qs[c.head_start : c.head_stop].reshape(1, -1, 1, D), pool_k.view(1, -1, 1, D),
                       pool_v.view(1, -1, 1, D), c.bias, scale, c.pad_keys is not None)

        return run
    return None


def setup_ms(kernel: str, layout: BlockLayout, heads: int, device: torch.device) -> float | None:
    """Plan / BlockMask construction time (paid once per layout)."""
    layout = kernel_layout(kernel, layout)
    t0 = time.perf_counter()
    if kernel == "xformers":
        from ..attention.xformers_paged import build_paged_plan

        build_paged_plan(layout, heads, device)
    elif kernel in ("flex", "flash"):
        from ..attention.flex_kernel import split_full_partial

        split_full_partial(layout, device)
    else:
        return None
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


# ---- the benchmark -----------------------------------------------------------------------------

def make_qkv(heads: int, seq_len: int, dim: int, dtype: torch.dtype, device: torch.device, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(1, heads, seq_len, dim, generator=g, device=device, dtype=dtype) for _ in range(3)]


def run_layout(kernels: list[str], q, k, v, layout: BlockLayout, kind: str, target: float | None,
               dense_ms: float, rows, ref, device, records: list, time_target: float) -> None:
    tok_density = token_density(layout)
    heads, seq_len = q.shape[1], q.shape[2]
    for kernel in kernels:
        ran = kernel_layout(kernel, layout)
        density = block_density(ran)
        rec = {"kernel": kernel, "heads": heads, "seq_len": seq_len, "density": round(density, 4),
               "token_density": round(tok_density, 4), "target_density": target, "layout": kind,
               "kernel_layout": "packed" if ran.slot_mask is not None else "padded",
               "block_size": layout.block_size, "slots": ran.num_blocks * ran.block_size}
        try:
            rec["setup_ms"] = setup_ms(kernel, layout, heads, device)
            t0 = time.perf_counter()
            out = block_sparse_attention(q, k, v, layout, kernel=kernel)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rec["first_call_s"] = round(time.perf_counter() - t0, 3)
            rec["max_abs_err"], rec["rel_l2"] = errors(out, ref, rows)
            del out
            ms = time_ms(lambda: block_sparse_attention(q, k, v, layout, kernel=kernel), device, time_target)
            core = core_fn(kernel, q, k, v, layout)
            rec["core_ms"] = time_ms(core, device, time_target) if core else None
            rec.update(ms=ms, dense_ms=dense_ms, speedup=dense_ms / ms, efficiency=dense_ms / ms * density)
        except Exception as exc:  # keep the table going; the record says what failed
            log.exception("%s failed on %s H=%d L=%d", kernel, kind, heads, seq_len)
            rec.update(error=short_error(exc), ms=None, dense_ms=dense_ms, speedup=None,
                       efficiency=None, max_abs_err=None)
        records.append(rec)
        print(format_row(rec), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def padding_check(kernels: list[str], heads: int, seq_len: int, frame_len: int, block_size: int,
                  device: torch.device, dtype: torch.dtype, dim: int, with_sdpa: bool) -> list[dict]:
    """Layouts whose blocks end in padding: every kernel against fp32 sampled rows (and masked SDPA)."""
    layout = padded_random_layout(seq_len, frame_len, block_size, 0.25, heads, seed=7)
    q, k, v = make_qkv(heads, seq_len, dim, dtype, device, seed=3)
    rows = sample_rows(seq_len, 512, 1)
    ref = reference_rows(q, k, v, layout, rows)
    sdpa_out = block_sparse_attention(q, k, v, layout, kernel="sdpa") if with_sdpa else None
    outs, checks = {}, []
    for kernel in kernels:
        rec = {"check": "padded_blocks", "kernel": kernel, "heads": heads, "seq_len": seq_len,
               "density": round(block_density(layout), 4), "padding_slots": int((layout.perm < 0).sum())}
        try:
            out = block_sparse_attention(q, k, v, layout, kernel=kernel)
            rec["max_abs_err"], rec["rel_l2"] = errors(out, ref, rows)
            rec["finite"] = bool(torch.isfinite(out).all())
            if sdpa_out is not None:
                rec["max_abs_diff_vs_sdpa"] = float((out.float() - sdpa_out.float()).abs().max())
            outs[kernel] = out
        except Exception as exc:
            log.exception("padding check: %s failed", kernel)
            rec["error"] = short_error(exc)
        checks.append(rec)
        print(f"  check padded blocks  {kernel:10s} H={heads} L={seq_len}: " +
              ", ".join(f"{key}={rec[key]:.3g}" if isinstance(rec.get(key), float) else f"{key}={rec.get(key)}"
                        for key in ("max_abs_err", "rel_l2", "max_abs_diff_vs_sdpa", "finite", "error") if key in rec),
              flush=True)
    if "xformers" in outs and "flex" in outs:
        diff = float((outs["xformers"].float() - outs["flex"].float()).abs().max())
        checks.append({"check": "xformers_vs_flex", "heads": heads, "seq_len": seq_len, "max_abs_diff": diff})
        print(f"  check padded blocks  xformers vs flex max abs diff {diff:.3g}", flush=True)
    return checks


def smoke(kernels: list[str], device: torch.device, dtype: torch.dtype) -> list[dict]:
    """B=2, strided [B, H, L, D] views, blocks of 128/64/32 with padding inside blocks, shared and
    per-head patterns: every kernel against fp32 masked SDPA."""
    results = []
    for bs, heads_shared in ((128, False), (64, True), (32, False)):
        layout = padded_random_layout(1000, 90, bs, 0.3, 1 if heads_shared else 4, seed=bs)
        x = torch.randn(3, 2, 1000, 4, 128, device=device, dtype=dtype)
        q, k, v = (t.transpose(1, 2) for t in x.unbind(0))  # [B, H, L, D] views of [B, L, H, D]
        ref = block_sparse_attention(q.float(), k.float(), v.float(), layout, kernel="sdpa")
        for kernel in kernels:
            rec = {"check": "smoke", "kernel": kernel, "block_size": bs, "shared_pattern": heads_shared}
            try:
                out = block_sparse_attention(q, k, v, layout, kernel=kernel)
                rec.update(shape=list(out.shape), dtype=str(out.dtype), max_abs_err=float((out.float() - ref).abs().max()))
            except Exception as exc:
                rec["error"] = short_error(exc)
            results.append(rec)
            print("  smoke", rec, flush=True)
    return results


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    lines = [ln for ln in text.splitlines() if "Error" in ln or "error" in ln] or text.splitlines()[:1]
    return " | ".join(dict.fromkeys(ln.strip() for ln in lines))[:400]


def format_row(rec: dict) -> str:
    def f(key, fmt):
        val = rec.get(key)
        return format(val, fmt) if isinstance(val, (int, float)) else "-"

    text = (f"{rec['kernel']:10s} H={rec['heads']:<3d} L={rec['seq_len']:<6d} {rec['layout']:7s} "
            f"dens={f('density', '.3f')} ms={f('ms', '8.2f')} core={f('core_ms', '8.2f')} "
            f"dense={f('dense_ms', '8.2f')} x{f('speedup', '5.2f')} eff={f('efficiency', '.2f')} "
            f"err={f('max_abs_err', '.1e')} rel={f('rel_l2', '.1e')}")
    return text + (f"  ERROR {rec['error']}" if "error" in rec else "")


def versions() -> dict:
    """run_info.versions with the attention kernels' libraries and xformers' status (its C++ part may not load)."""
    out = run_info.versions(("triton", "xformers"), run_info.FLASH_DISTRIBUTIONS)
    try:
        from ..attention.xformers_compat import xformers_status

        out["xformers_status"] = xformers_status().reason
    except Exception as exc:
        out["xformers_status"] = f"{type(exc).__name__}: {exc}"
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="JSON output (default bench/results/attention.json; dry run: a temp file)")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes (H=2, L=240, block 16), CPU-safe")
    p.add_argument("--kernels", default=None, help="comma list (default xformers,flex; dry run: sdpa)")
    p.add_argument("--heads", default=None, help="comma list (default 12,40)")
    p.add_argument("--seq-lens", default=None, help="comma list (default 32760,75600)")
    p.add_argument("--densities", default="0.05,0.10,0.25,0.50")
    p.add_argument("--layouts", default="random,struct,pose", help="comma list of random, struct, pose")
    p.add_argument("--pose-builder", default="builtin", help="'builtin' or module:function(num_heads, seq_len, block_size)")
    p.add_argument("--no-checks", action="store_true", help="skip the smoke and padded-block correctness checks")
    p.add_argument("--time-target", type=float, default=0.3, help="seconds of repetitions per timing")
    p.add_argument("--layout-density", action="store_true",
                   help="CPU only: build the pose layouts and report kernel vs exact density, no attention run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.layout_density:
        return write_layout_density(args, argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.dry_run:
        heads, seq_lens, dim, bs, dtype = [2], [240], 32, 16, torch.float32 if device.type == "cpu" else torch.bfloat16
        kernels = (args.kernels or "sdpa").split(",")
    else:
        if device.type != "cuda":
            raise SystemExit("the full benchmark needs a CUDA GPU; use --dry-run on CPU")
        heads, seq_lens, dim, bs, dtype = [12, 40], [32760, 75600], 128, 128, torch.bfloat16
        kernels = (args.kernels or "xformers,flex").split(",")
    heads = [int(h) for h in args.heads.split(",")] if args.heads else heads
    seq_lens = [int(s) for s in args.seq_lens.split(",")] if args.seq_lens else seq_lens
    densities = [float(d) for d in args.densities.split(",")]
    kinds = args.layouts.split(",")
    out_path = args.out or (Path(tempfile.gettempdir()) / "iasa_attention_dry_run.json" if args.dry_run
                            else Path(__file__).resolve().parent / "results" / "attention.json")
    pose_builder = load_pose_builder(args.pose_builder)
    started = time.perf_counter()
    records: list[dict] = []
    checks: list[dict] = []
    notes: list[str] = []
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else platform.machine()}), "
          f"kernels {kernels}, dtype {dtype}", flush=True)
    if not args.no_checks:
        checks += smoke(kernels if "sdpa" in kernels else kernels + ["sdpa"], device, dtype)
    for seq_len in seq_lens:
        for h in heads:
            q, k, v = make_qkv(h, seq_len, dim, dtype, device, seed=0)
            dense_ms = time_ms(dense_fn(q, k, v), device, args.time_target)
            print(f"-- H={h} L={seq_len}: dense {'cuDNN ' if device.type == 'cuda' else ''}SDPA {dense_ms:.2f} ms", flush=True)
            rows = sample_rows(seq_len, 512, seed=h)
            cases: list[tuple[str, float | None, Callable[[], BlockLayout]]] = []
            if "random" in kinds:
                cases += [("random", d, lambda d=d: random_layout(seq_len, bs, d, h, seed=int(d * 1000)))
                          for d in densities]
            if "struct" in kinds and seq_len in GRIDS:
                cases.append(("struct", None, lambda: struct_layout(seq_len, bs)))
            if "pose" in kinds:
                cases.append(("pose", None, lambda: pose_builder(h, seq_len, bs)))
            for kind, target, build in cases:
                try:
                    layout = build()
                except Exception as exc:
                    note = f"{kind} layout H={h} L={seq_len} not built: {type(exc).__name__}: {exc}"
                    log.warning(note)
                    notes.append(note)
                    continue
                ref = reference_rows(q, k, v, layout, rows)
                run_layout(kernels, q, k, v, layout, kind, target, dense_ms, rows, ref, device, records,
                           args.time_target)
            del q, k, v
            if not args.no_checks:
                frame_len = CHECK_FRAME_LEN.get(seq_len, max(1, seq_len // 8))
                checks += padding_check(kernels, h, seq_len, frame_len, bs, device, dtype, dim, with_sdpa=args.dry_run)
    if not args.no_checks and not args.dry_run:  # medium size, where the masked SDPA reference fits in memory
        medium = [kn for kn in kernels if kn != "sdpa"] + ["sdpa"]
        checks += padding_check(medium, 12, 8190, CHECK_FRAME_LEN[8190], bs, device, dtype, dim, with_sdpa=True)
    result = {
        "command": "python iasa_cli.py bench.attention " + " ".join(sys.argv[1:] if argv is None else argv),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else f"none (CPU {platform.machine()})",
        "versions": versions(),
        "dtype": str(dtype).replace("torch.", ""),
        "head_dim": dim,
        "block_size": bs,
        "wall_s": round(time.perf_counter() - started, 1),
        "records": records,
        "checks": checks,
        "notes": notes,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(f"wrote {out_path} ({len(records)} records, {result['wall_s']} s)", flush=True)
    return result


def write_layout_density(args: argparse.Namespace, argv: list[str] | None) -> dict:
    seq_lens = [int(s) for s in args.seq_lens.split(",")] if args.seq_lens else [32760, 75600]
    started = time.perf_counter()
    result = {
        "command": "python iasa_cli.py bench.attention " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"CPU {platform.machine()} (layout construction only)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "pose": "pose.synthetic.talking_pose, SparseAttentionConfig defaults (causal, top_k 2, all regions)",
        "records": layout_density_records(seq_lens, 128),
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    out_path = args.out or Path(tempfile.gettempdir()) / "iasa_attention_layout_density.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(f"wrote {out_path}", flush=True)
    return result


if __name__ == "__main__":
    main()
