"""IASA-mini VAE training step and latent encoding: ComfyUI's chunked ``WanVAE.encode``/``decode`` (the
baseline, what run 2 trained with) vs the equal whole-window pass of training/vae_parallel.py.

    python iasa_cli.py bench.vae_step [--out FILE] [--dry-run]   # GPU: ~1 minute on one H200

Per shape (batch x frames x crop^2 at the v2 recipe's width): one optimizer step (forward, L1 loss, backward,
AdamW) under bf16 autocast, median of ``--iters`` after warm-up; and no-grad encoding of 256^2 windows (the
teacher's latent cache). Each row also checks that both paths give the same reconstruction (relative L2).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from ..training.tiny_wan import VAEConfig, build_vae
from .floors import time_ms
from ..training.vae_parallel import decode_parallel, encode_parallel

TRAIN_SHAPES = [(8, 49, 96), (32, 5, 64), (16, 9, 128), (16, 17, 128), (8, 97, 64)]
ENCODE_SHAPES = [(32, 49, 256)]
DRY = dict(train=[(2, 5, 32), (1, 9, 32)], encode=[(2, 5, 32)], dim=8, iters=2)


def _paths(vae):
    return {"chunked": (vae.encode, vae.decode),
            "parallel": (lambda x: encode_parallel(vae, x), lambda z: decode_parallel(vae, z))}


def bench_train(vae, shape, iters: int, dev: torch.device) -> dict:
    b, t, s = shape
    x = torch.rand(b, 3, t, s, s, device=dev) * 2 - 1
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    row: dict = {"batch": b, "frames": t, "crop": s}
    recs = {}
    with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for name, (enc, dec) in _paths(vae).items():  # before any optimizer step: the same weights
            recs[name] = dec(enc(x[:1])).float()
    for name, (enc, dec) in _paths(vae).items():
        def step():
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                rec = dec(enc(x))
            loss = (rec.float() - x).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        row[f"{name}_s"] = round(time_ms(step, dev, repeats=iters) / 1000, 4)
        if dev.type == "cuda":
            row[f"{name}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    row["speedup"] = round(row["chunked_s"] / row["parallel_s"], 2)
    row["megapixels_per_s_parallel"] = round(b * t * s * s / row["parallel_s"] / 1e6, 1)
    row["rel_l2_parallel_vs_chunked"] = float((recs["parallel"] - recs["chunked"]).norm() / recs["chunked"].norm())
    return row


@torch.no_grad()
def bench_encode(vae, shape, iters: int, dev: torch.device) -> dict:
    b, t, s = shape
    x = torch.rand(b, 3, t, s, s, device=dev) * 2 - 1
    row: dict = {"batch": b, "frames": t, "size": s}
    for name, (enc, _dec) in _paths(vae).items():
        def run():
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                enc(x)
        row[f"{name}_s"] = round(time_ms(run, dev, repeats=iters) / 1000, 4)
    row["speedup"] = round(row["chunked_s"] / row["parallel_s"], 2)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="bench.vae_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/vae_step.json")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (checks the script)")
    a = p.parse_args(argv)
    dev = torch.device("cpu" if a.dry_run or not torch.cuda.is_available() else "cuda")
    train, encode, dim, iters = (DRY["train"], DRY["encode"], DRY["dim"], DRY["iters"]) if a.dry_run else (
        TRAIN_SHAPES, ENCODE_SHAPES, a.dim, a.iters)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    vae = build_vae(VAEConfig(dim=dim), seed=0, device=dev)
    rows = [bench_train(vae, s, iters, dev) for s in train]
    for r in rows:
        print(json.dumps(r), flush=True)
    enc_rows = [bench_encode(vae.eval(), s, iters, dev) for s in encode]
    for r in enc_rows:
        print(json.dumps(r), flush=True)
    result = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "dim": dim, "dry_run": a.dry_run, "train_step": rows, "encode": enc_rows,
              "command": "python iasa_cli.py bench.vae_step" + (" --dry-run" if a.dry_run else "")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
