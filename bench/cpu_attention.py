"""CPU benchmark of the block-sparse kernels on the layouts the demo runs: ``grouped`` against masked SDPA.

    python iasa_cli.py bench.cpu_attention [--target-s 1.0] [--out bench/results/cpu_attention.json]

Layouts: the synthetic talking pose (pose/synthetic.py) through ``build_pose_layout`` at the IASA-mini demo's
shapes: 256x256 pixels (16x16 tokens of 16 px), one window of the long-video wrapper (49 frames = 13 latent
frames) with the 256 reference tokens in front, causal top-2, block 16; and the same for a 97-frame window.
q/k/v: ``[1, 2, L, 128]`` (the IASA-mini teacher's 2 heads of 128), random, in fp32 (ComfyUI's dtype for a
model on the CPU) and bf16. Per record: the median call (``bench.attention.time_ms``: one warm-up, then ``--target-s`` seconds of calls) for ``sdpa`` (dense
work under the ``[L, L]`` token mask, the reference and the CPU path before ``grouped``) and ``grouped``, the
speed-up, and the largest difference between the two outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ..attention.grid import TokenGrid
from ..attention.kernels import prepare_kernel
from ..attention.pose_layout import SparseAttentionConfig, build_pose_layout
from ..pose.synthetic import talking_pose
from .attention import time_ms

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_attention.json"


def demo_layout(frames: int, size: int = 256, patch_px: int = 16, block_size: int = 16, top_k: int = 2):
    latent_frames = (frames - 1) // 4 + 1
    side = size // patch_px
    grid = TokenGrid(video_frames=latent_frames, hp=side, wp=side, ref_tokens_before=side * side)
    built = build_pose_layout(talking_pose(n_frames=frames, width=size, height=size), grid,
                              SparseAttentionConfig(block_size=block_size, top_k=top_k))
    if built.layout is None:
        raise RuntimeError(f"pose layout fell back to dense: {built.fallback_reason}")
    return built.layout


def record(frames: int, dtype: torch.dtype, target_s: float) -> dict:
    layout = demo_layout(frames)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, layout.seq_len, 128, generator=g).to(dtype) for _ in range(3))
    kernels = {name: prepare_kernel(layout, name, q) for name in ("sdpa", "grouped")}
    with torch.inference_mode():
        ref, out = (kernels[name](q, k, v) for name in ("sdpa", "grouped"))
        ms = {name: time_ms(lambda kern=kern: kern(q, k, v), q.device, target_s, warmup=1)
              for name, kern in kernels.items()}
    density = layout.density()
    return {"frames": frames, "seq_len": layout.seq_len, "dtype": str(dtype).replace("torch.", ""),
            "block_density": round(density.block_density, 4), "token_density": round(density.token_density, 4),
            "groups": len(kernels["grouped"].groups[0]), "query_blocks": layout.num_blocks,
            "sdpa_ms": round(ms["sdpa"], 2), "grouped_ms": round(ms["grouped"], 2),
            "speedup": round(ms["sdpa"] / ms["grouped"], 2),
            "max_abs_diff": float((out.float() - ref.float()).abs().max())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-s", type=float, default=1.0, help="seconds of timed calls per kernel (at least 3 calls)")
    ap.add_argument("--frames", type=int, nargs="+", default=[49, 97])
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    rows = [record(f, dt, a.target_s) for f in a.frames for dt in (torch.float32, torch.bfloat16)]
    for r in rows:
        print(f"{r['frames']:4d} frames {r['dtype']:9s} L={r['seq_len']} density {100 * r['block_density']:.1f} %: "
              f"sdpa {r['sdpa_ms']:.1f} ms, grouped {r['grouped_ms']:.1f} ms ({r['speedup']:.2f}x), "
              f"max diff {r['max_abs_diff']:.2e}")
    out = {"command": "python iasa_cli.py bench.cpu_attention " + " ".join(sys.argv[1:] if argv is None else argv),
           "records": rows, "threads": torch.get_num_threads(),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
           "versions": {"python": platform.python_version(), "torch": torch.__version__},
           "date": time.strftime("%Y-%m-%d")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
