"""End-to-end DiT forward on ComfyUI's WanModel (Wan2.1-1.3B configuration, random bf16 weights):
dense cuDNN self-attention vs the IASA patch with a pose-derived layout, one GPU.

    python iasa_cli.py bench.wan_forward [--out bench/results/wan_forward.json] [--dry-run]

Variants (self-attention only; cross-attention always goes to ComfyUI's own backend):
dense_cudnn (SDPA, cuDNN backend), dense_xformers (xformers FA2 op), iasa_xformers and iasa_flex (the
pack's SparseAttentionPatch.attention override with the pose layout, exactly as sampling calls it,
layout transposes included), no_self_attention (self-attention returns v: the floor for any kernel).
Layout building is timed separately. Speed does not depend on weight values.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attention.grid import TokenGrid
from ..attention.patch import CALL_KEY, CallInfo, SparseAttentionPatch
from ..attention.pose_layout import SparseAttentionConfig, build_pose_layout
from ..tests.unit.attention_poses import talking_pose
from ..training.comfy_env import ensure_comfy_on_path

WAN_1_3B = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
TINY = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2)


def build_model(cfg: dict, device: str, dtype: torch.dtype):
    ensure_comfy_on_path()
    import comfy.ldm.wan.model
    import comfy.ops

    model = comfy.ldm.wan.model.WanModel(
        model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, freq_dim=256, text_dim=4096, out_dim=16,
        window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, device=device, dtype=dtype,
        operations=comfy.ops.disable_weight_init, **cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def self_attention_override(kind: str):
    """An override that replaces only self-attention ([B, L, H*D] q/k/v of equal length)."""
    def override(func, q, k, v, *args, heads=None, transformer_options=None, **kwargs):
        if q.shape[1] != k.shape[1]:
            return func(q, k, v, *args, heads=heads, transformer_options=transformer_options, **kwargs)
        if kind == "none":
            return v
        b, L, hd = q.shape
        qh, kh, vh = (t.view(b, L, heads, hd // heads) for t in (q, k, v))
        if kind == "xformers":
            from ..attention.xformers_compat import import_fmha, xformers_status

            xformers_status()   # applies the _built_with_cuda patch where the C++ extension is missing
            fmha = import_fmha()
            return fmha.memory_efficient_attention(qh, kh, vh, op=(fmha.flash.FwOp, None)).reshape(b, L, hd)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION if q.is_cuda else SDPBackend.MATH):
            out = F.scaled_dot_product_attention(qh.transpose(1, 2), kh.transpose(1, 2), vh.transpose(1, 2))
        return out.transpose(1, 2).reshape(b, L, hd)
    return override


def time_forward(model, x, t, context, transformer_options, repeats: int, warmup: int = 2) -> float:
    def run():
        with torch.inference_mode():
            return model(x, t, context, transformer_options=dict(transformer_options))
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            run()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "wan_forward.json")
    ap.add_argument("--dry-run", action="store_true", help="tiny model and latent on CPU, sdpa kernel only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=2)
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.dry_run
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    frames, height, width = (81, 480, 832) if cuda else (9, 64, 96)
    latent = (16, (frames - 1) // 4 + 1, height // 8, width // 8)
    model = build_model(WAN_1_3B if cuda else TINY, device, dtype)
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, *latent, device=device, dtype=dtype, generator=gen)
    t = torch.full((1,), 500.0, device=device)
    context = torch.randn(1, 512, 4096, device=device, dtype=dtype, generator=gen)

    grid = TokenGrid.from_latent_shape(latent[1:])
    pose = talking_pose(n_frames=frames, width=width, height=height)
    config = SparseAttentionConfig(top_k=args.top_k, causal=True, block_size=128 if cuda else 16)
    t0 = time.perf_counter()
    plan = build_pose_layout(pose, grid, config)
    layout_build_ms = 1000 * (time.perf_counter() - t0)
    density = plan.density.block_density

    patches = {}
    variants = {"dense_cudnn": (self_attention_override("cudnn"), 1.0),
                "no_self_attention": (self_attention_override("none"), 0.0)}
    if cuda:
        variants["dense_xformers"] = (self_attention_override("xformers"), 1.0)
    for kernel in (("xformers", "flex") if cuda else ("sdpa",)):
        patch = SparseAttentionPatch(pose, config, kernel=kernel)
        patch._layouts[(grid, None)] = plan   # the layout the wrapper would build once per run
        variants[f"iasa_{kernel}"] = (patch.attention, density)
        patches[f"iasa_{kernel}"] = patch
    records = []
    for name, (override, dens) in variants.items():
        opts = {"optimized_attention_override": override, CALL_KEY: CallInfo(grid, None)}
        ms = time_forward(model, x, t, context, opts, args.repeats)
        rec = {"variant": name, "ms": ms, "density": dens, "frames": frames, "height": height, "width": width,
               "tokens": grid.seq_len}
        if name in patches:   # proof that the sparse path ran, not a dense fallback
            rec["calls"] = dict(patches[name].stats)
            assert patches[name].stats["sparse"] > 0, patches[name].stats
        records.append(rec)
        print(f"{name:18s} {ms:9.1f} ms  density {dens:.3f}", flush=True)
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    if cuda:
        from ..attention.xformers_compat import xformers_status

        versions.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), xformers=str(xformers_status()))
    result = {"command": "python iasa_cli.py bench.wan_forward" + (" --dry-run" if args.dry_run else ""),
              "gpu": torch.cuda.get_device_name() if cuda else "none (CPU dry run)", "versions": versions,
              "model": "ComfyUI WanModel, Wan2.1-1.3B config (dim 1536, 30 layers, 12 heads), random bf16 weights"
              if cuda else "tiny WanModel (dry run)", "top_k": args.top_k, "block_size": config.block_size,
              "layout_build_ms": layout_build_ms, "density_report": plan.density.as_dict(), "records": records}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
