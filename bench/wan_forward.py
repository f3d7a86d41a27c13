"""End-to-end DiT forward on ComfyUI's Wan model (Wan2.1-1.3B configuration, random bf16 weights), as
sampling calls it: dense cuDNN self-attention vs the IASA patch with a pose-derived layout, one GPU.

    python iasa_cli.py bench.wan_forward [--out FILE] [--dry-run]   # GPU: < 2 minutes on one H200

The random weights are loaded by ComfyUI's own loader (``comfy.sd.load_diffusion_model_state_dict``, what
UNETLoader does) into a ModelPatcher; every variant is a clone of it, loaded with ComfyUI's model
management (which applies object patches) and called through ``BaseModel.apply_model`` with the
transformer options sampling would pass (the clone's wrappers and callbacks merged in, as
``sampler_helpers.prepare_model_patcher`` does). The IASA variants are made by ``apply_sparse_attention``,
so the APPLY_MODEL wrapper learns the grid, builds the layout and the call-site patches mark
self-attention, exactly as in a workflow.

Variants (self-attention only; cross-attention always goes to ComfyUI's own backend): dense_cudnn (SDPA,
cuDNN backend), dense_xformers (xformers FA2 op), iasa_xformers and iasa_flex (iasa_sdpa in a dry run),
no_self_attention (self-attention returns v: the floor for any kernel). Layout building is timed
separately. Speed does not depend on weight values.

Check (at full size on the GPU): the denoised output of every IASA variant against a masked reference, a
clone whose self-attention is SDPA with the token mask of ``attention.pattern_mask`` (the independent
token-level construction the training code uses) from the same labels and frame selection; the dense
output's distance to that reference is recorded next to it (it shows the mask matters). The run fails
when a sparse variant is further from the reference than ``MAX_REL_L2`` or did not run sparse.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attention.grid import TokenGrid
from ..attention.patch import SparseAttentionPatch, apply_sparse_attention
from ..attention.pattern_mask import pattern_token_mask
from ..attention.pose_layout import SparseAttentionConfig, build_pose_layout
from ..pose.synthetic import talking_pose
from ..training.comfy_env import ensure_comfy_on_path

WAN_1_3B = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
TINY = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2)
TEXT_TOKENS = 512
SIGMA = 0.5
# Relative L2 of the denoised output to the masked reference that a sparse variant may not exceed:
# bf16 rounding through 30 layers on the GPU, float32 rounding in the dry run.
MAX_REL_L2 = {"cuda": 2e-2, "cpu": 1e-4}


def build_patcher(cfg: dict, dtype: torch.dtype):
    """A ModelPatcher of a randomly initialised ComfyUI WanModel, loaded the way UNETLoader loads a file."""
    ensure_comfy_on_path()
    import comfy.ldm.wan.model
    import comfy.model_management
    import comfy.ops
    import comfy.sd

    device = comfy.model_management.get_torch_device()
    model = comfy.ldm.wan.model.WanModel(
        model_type="t2v", patch_size=(1, 2, 2), text_len=TEXT_TOKENS, in_dim=16, freq_dim=256, text_dim=4096,
        out_dim=16, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, device=device,
        dtype=dtype, operations=comfy.ops.disable_weight_init, **cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    sd = model.state_dict()
    del model
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype})
    if patcher is None or type(patcher.model.diffusion_model).__name__ != "WanModel":
        raise RuntimeError("ComfyUI did not detect the random state dict as a Wan model")
    return patcher


def self_attention_override(kind: str, mask: torch.Tensor | None = None):
    """An override that replaces only self-attention ([B, L, H*D] q/k/v of the video's length L; the text
    has TEXT_TOKENS tokens and the grids here are never that long, checked in main)."""
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
        qh, kh, vh = (t.transpose(1, 2) for t in (qh, kh, vh))
        if kind == "masked":   # the reference: explicit token mask, any backend that takes one
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask.to(q.device))
        else:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION if q.is_cuda else SDPBackend.MATH):
                out = F.scaled_dot_product_attention(qh, kh, vh)
        return out.transpose(1, 2).reshape(b, L, hd)
    return override


def with_override(patcher, override):
    m = patcher.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    return m


def sampling_options(patcher) -> dict:
    """The transformer_options one model call gets during sampling: the clone's own, plus its wrappers and
    callbacks (sampler_helpers.prepare_model_patcher)."""
    import comfy.patcher_extension

    to = dict(patcher.model_options.get("transformer_options", {}))
    to["wrappers"] = comfy.patcher_extension.merge_nested_dicts(dict(to.get("wrappers", {})), patcher.wrappers)
    to["callbacks"] = comfy.patcher_extension.merge_nested_dicts(dict(to.get("callbacks", {})), patcher.callbacks)
    return to


def forward_fn(patcher, x, sigma, context):
    """Load ``patcher`` (object patches applied) and return a function running one model call."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    to = sampling_options(patcher)

    def run():
        with torch.inference_mode():
            return patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=dict(to))
    return run


def time_call(run, repeats: int, warmup: int = 2) -> tuple[float, torch.Tensor]:
    out = None
    for _ in range(warmup):
        out = run()
    times = []
    for _ in range(repeats):
        if out.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = run()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), out


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/wan_forward.json (GPU) or wan_forward_dry_run.json (--dry-run)")
    ap.add_argument("--dry-run", action="store_true", help="tiny model and latent on CPU, sdpa kernel only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=2)
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path(__file__).parent / "results" / ("wan_forward_dry_run.json" if args.dry_run else "wan_forward.json")

    cuda = torch.cuda.is_available() and not args.dry_run
    ensure_comfy_on_path(cpu=not cuda)
    dtype = torch.bfloat16 if cuda else torch.float32
    frames, height, width = (81, 480, 832) if cuda else (9, 128, 192)
    latent = (16, (frames - 1) // 4 + 1, height // 8, width // 8)
    patcher = build_patcher(WAN_1_3B if cuda else TINY, dtype)
    device = patcher.load_device
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, *latent, device=device, dtype=torch.float32, generator=gen)
    sigma = torch.full((1,), SIGMA, device=device)
    context = torch.randn(1, TEXT_TOKENS, 4096, device=device, dtype=torch.float32, generator=gen)

    grid = TokenGrid.from_latent_shape(latent[1:])
    if grid.seq_len == TEXT_TOKENS:
        raise SystemExit("the bench's self-attention overrides tell self from cross by length: use another size")
    pose = talking_pose(n_frames=frames, width=width, height=height)
    config = SparseAttentionConfig(top_k=args.top_k, causal=True, block_size=128 if cuda else 16)
    t0 = time.perf_counter()
    plan = build_pose_layout(pose, grid, config)
    layout_build_ms = 1000 * (time.perf_counter() - t0)
    mask = pattern_token_mask(torch.from_numpy(plan.labels)[None], torch.from_numpy(plan.frame_select)[None])[0]
    layers = len(patcher.model.diffusion_model.blocks)

    variants = {"masked_reference": (with_override(patcher, self_attention_override("masked", mask)), None),
                "dense_cudnn": (with_override(patcher, self_attention_override("cudnn")), None),
                "no_self_attention": (with_override(patcher, self_attention_override("none")), None)}
    if cuda:
        variants["dense_xformers"] = (with_override(patcher, self_attention_override("xformers")), None)
    for kernel in (("xformers", "flex") if cuda else ("sdpa",)):
        patch = SparseAttentionPatch(pose, config, kernel=kernel, strict=True)   # strict: any fallback fails
        variants[f"iasa_{kernel}"] = (apply_sparse_attention(patcher, patch), patch)

    outputs, records = {}, []
    for name, (variant, patch) in variants.items():
        ms, outputs[name] = time_call(forward_fn(variant, x, sigma, context), args.repeats)
        rec = {"variant": name, "ms": ms, "frames": frames, "height": height, "width": width, "tokens": grid.seq_len}
        if patch is not None:   # proof that the sparse path ran in every layer of every call, not a fallback
            calls = 2 + args.repeats
            rec["calls"] = dict(patch.stats)
            if patch.stats["sparse"] != calls * layers or patch.stats["layouts_built"] != 1:
                raise RuntimeError(f"{name}: expected {calls * layers} sparse calls from one layout, got {patch.stats}")
            rec["density"] = plan.density.block_density
        else:
            rec["density"] = 0.0 if name == "no_self_attention" else 1.0
        records.append(rec)
        print(f"{name:18s} {ms:9.1f} ms  density {rec['density']:.3f}", flush=True)

    reference = outputs["masked_reference"]
    check = {"reference": "self-attention = SDPA with attention.pattern_mask.pattern_token_mask (same labels and "
                          "frame selection)", "max_rel_l2": MAX_REL_L2[device.type],
             "rel_l2_to_reference": {n: rel_l2(o, reference) for n, o in outputs.items() if n != "masked_reference"}}
    print("relative L2 to the masked reference:", json.dumps(check["rel_l2_to_reference"]), flush=True)
    bad = {n: e for n, e in check["rel_l2_to_reference"].items() if n.startswith("iasa_") and not e <= check["max_rel_l2"]}
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    if cuda:
        from ..attention.xformers_compat import xformers_status

        versions.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), xformers=str(xformers_status()))
    result = {"command": "python iasa_cli.py bench.wan_forward" + (" --dry-run" if args.dry_run else ""),
              "gpu": torch.cuda.get_device_name() if cuda else "none (CPU dry run)", "versions": versions,
              "model": "ComfyUI WanModel, Wan2.1-1.3B config (dim 1536, 30 layers, 12 heads), random bf16 weights"
              if cuda else "tiny WanModel (dry run)", "top_k": args.top_k, "block_size": config.block_size,
              "sigma": SIGMA, "layout_build_ms": layout_build_ms, "density_report": plan.density.as_dict(),
              "check": check, "records": records}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    import comfy.model_management

    del variants, variant, patcher
    comfy.model_management.unload_all_models()   # before interpreter exit tears ComfyUI's modules down
    gc.collect()
    if bad:
        raise SystemExit(f"sparse output differs from the masked reference beyond {check['max_rel_l2']}: {bad}")
    return result


if __name__ == "__main__":
    main()
