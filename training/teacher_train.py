"""Train the IASA-mini teacher: a tiny Wan 2.1 DiT (ComfyUI's ``WanModel``) conditioned like Wan 2.2
Fun-Control (in_dim 48 = noise | pose-video latent | empty start-image channels; the reference picture as
``ref_conv`` tokens in front of the video), by flow matching exactly as ComfyUI samples it
(``training/flow.py``), on latents encoded once with the IASA-mini VAE.

Sparse (paper stage 1): with probability ``--sparse-prob`` a step runs every video self-attention under
the window's input-aware mask (``--top-k`` frames, causal unless ``--bidirectional``; the mask IASA Sparse
Attention builds from the same pose), otherwise dense, so the teacher works both ways.

Condition dropout (``--p-uncond``) zeroes the pose-video latent and keeps the reference: what a stock
``Wan22FunControlToVideo`` with ref_image and without control_video produces, i.e. the negative branch
for CFG (guidance pushes towards the pose, the identity comes from the reference in both). Text is unused (zero context; a node supplies zeros ``[B, 512, 4096]``; training uses a
``--context-tokens``-long zero context, which gives the same output since all keys are equal).

CPU smoke run::

    python iasa_cli.py training.teacher_train --data procedural:4:9 --vae .dev/runs/vae-smoke/iasa_mini_vae.safetensors \\
        --out .dev/runs/teacher-smoke --layers 2 --ffn 256 --frames 5 --batch 2 --steps 4 --log-every 2 \\
        --eval-windows 1 --eval-steps 2 --device cpu

H200, 6 minutes of training after the one-off latent encoding (``--steps 0``: step count measured so the
schedule ends with the budget)::

    python iasa_cli.py training.teacher_train --data .dev/synth/shards --vae .dev/runs/vae/iasa_mini_vae.safetensors \\
        --out .dev/runs/teacher --dim 256 --layers 8 --ffn 1024 --frames 49 --batch 32 --steps 0 \\
        --max-minutes 6 --shift 3

Several GPUs: ``torchrun --nproc_per_node=N iasa_cli.py training.teacher_train ...`` (``--batch`` is global).
Outputs: ``iasa_mini_teacher.safetensors`` (+ ``.json`` card; loads with stock ``UNETLoader``),
``teacher_loss.csv/.json/.png``, ``summary.json``, ``preview.png``, ``latents.safetensors`` (cache,
reused by later runs with the same data/VAE/frames), ``checkpoints/`` (a rerun resumes).
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed as D
from . import flow
from .clips import load_clips, to_model_range
from .model_card import provenance
from .runner import RunConfig, Runner, check_window_args, configure_cuda, make_optimizer, write_summary
from ..attention.pattern_mask import pattern_token_mask
from ..attention.pose_layout import SparseAttentionConfig
from .masked_attention import transformer_options
from .teacher_data import (LatentSet, build_continuation_set, build_latent_set, concat_latent, join_latent_sets,
                           latent_cache_meta, load_latent_set, model_input, save_latent_set)
from .tiny_wan import TeacherConfig, build_teacher, config_dict, file_sha256, init_from_weights, load_vae, save_model

log = logging.getLogger(__name__)
WEIGHTS_NAME = "iasa_mini_teacher.safetensors"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="training.teacher_train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard dir/file, or procedural:N[:T[:S]]")
    p.add_argument("--vae", required=True, help="IASA-mini VAE safetensors (from training.vae_train)")
    p.add_argument("--dim", type=int, default=256, help="multiple of 128 (head_dim 128)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--frames", type=int, default=49, help="pixel frames per window (1 + 4k)")
    p.add_argument("--stride", type=int, default=0, help="window stride in frames (0 = --frames)")
    p.add_argument("--max-windows-per-clip", type=int, default=0)
    p.add_argument("--continuation-windows", type=int, default=0,
                   help="per clip, windows sliced from the clip's one encode at latent offsets >= 1 (what IASA Long "
                        "Video's later windows see), added to the windows encoded on their own")
    p.add_argument("--batch", type=int, default=32, help="global batch (windows), split over ranks")
    p.add_argument("--shift", type=float, default=3.0, help="flow shift for training sigmas (use it at sampling)")
    p.add_argument("--p-uncond", type=float, default=0.1, help="probability of zeroing the pose-video latent")
    p.add_argument("--sparse-prob", type=float, default=0.8,
                   help="fraction of steps trained under the input-aware attention mask (the rest dense)")
    p.add_argument("--top-k", type=int, default=2, help="past frames kept per frame by the mask (paper Eq. 2)")
    p.add_argument("--bidirectional", action="store_true", help="top-K among all frames instead of past ones")
    p.add_argument("--ref-random-prob", type=float, default=0.6,
                   help="probability that the reference is a random frame of the clip instead of the first")
    p.add_argument("--context-tokens", type=int, default=1, help="length of the zero text context in training")
    p.add_argument("--amp", choices=("bf16", "none"), default="bf16")
    p.add_argument("--latents-cache", default="", help="latent cache file (default <out>/latents.safetensors)")
    p.add_argument("--render-workers", type=int, default=0, help="pose rendering processes (0 = cores - 1)")
    p.add_argument("--encode-batch", type=int, default=8, help="windows per VAE encode call")
    p.add_argument("--max-clips", type=int, default=0)
    p.add_argument("--eval-windows", type=int, default=4, help="held-out windows sampled after training")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--eval-cfg", type=float, default=3.0)
    p.add_argument("--save-dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--init", default="", help="start from these exported teacher weights (fine-tuning); "
                   "--dim/--layers/--ffn must match them")
    p.add_argument("--device", default="auto")
    RunConfig.add_args(p, out=".dev/runs/teacher", steps=0, max_minutes=6.0, lr=4e-4, warmup=200, min_lr_frac=0.1,
                       weight_decay=0.01, log_every=50, checkpoint_every=1000)
    a = p.parse_args(argv)
    check_window_args(p, a)
    if a.dim % 128:
        p.error(f"--dim must be a multiple of 128 (stock detection: num_heads = dim // 128), got {a.dim}")
    return a


def _amp(dev: torch.device, amp: str):
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp == "bf16" and dev.type == "cuda")


def get_latents(a, info: D.DistInfo, vae, dev: torch.device) -> LatentSet:
    """Rank 0 checks the cache and rebuilds it unless it matches these settings; every rank passes the one
    barrier (a rank must not skip it because the cache it sees was written a moment ago), then loads it."""
    cache = Path(a.latents_cache or Path(a.out) / "latents.safetensors")
    want = {"data": str(a.data), "frames": a.frames, "stride": a.stride or a.frames, "vae_sha256": file_sha256(a.vae),
            "max_clips": a.max_clips, "max_windows_per_clip": a.max_windows_per_clip, "seed": a.seed,
            "top_k": a.top_k, "causal": not a.bidirectional}
    continuation = getattr(a, "continuation_windows", 0)   # the distillation reads this cache too, without them
    if continuation:   # absent when 0, so caches made before the option stay valid
        want["continuation_windows"] = continuation
    if info.is_main:
        meta = latent_cache_meta(cache)
        if meta is not None and (any(meta.get(k) != v for k, v in want.items())
                                 or meta.get("continuation_windows", 0) != continuation):
            log.warning("latent cache %s was made with other settings (%s); rebuilding", cache,
                        {k: meta.get(k) for k in want})
            meta = None
        if meta is None:
            clips = load_clips(a.data, "train", a.max_clips or None)
            ls = build_latent_set(clips, vae, a.frames, a.stride or a.frames, dev, batch=a.encode_batch,
                                  workers=a.render_workers, amp=a.amp == "bf16", seed=a.seed,
                                  max_per_clip=a.max_windows_per_clip, pattern=pattern_config(a))
            ls = join_latent_sets(ls, build_continuation_set(
                clips, vae, a.frames, continuation, dev, workers=a.render_workers, amp=a.amp == "bf16",
                seed=a.seed, pattern=pattern_config(a)))
            save_latent_set(ls, cache, want)
    D.barrier(info)
    ls, _ = load_latent_set(cache)
    log.info("teacher data: %d windows from %s", len(ls), cache)
    return ls.to(dev)


def pattern_config(a) -> SparseAttentionConfig:
    return SparseAttentionConfig(top_k=a.top_k, causal=not a.bidirectional)


def teacher_velocity(model, x_t: torch.Tensor, sigma: torch.Tensor, control: torch.Tensor, ref: torch.Tensor,
                     context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One teacher call as ComfyUI makes it: concat ``[x_t | control | 0]``, ``reference_latent`` (ref_conv
    tokens) = ``ref[:, :, 0]``, optional input-aware self-attention ``mask`` ``[B, L, L]``."""
    return model(model_input(x_t, concat_latent(control)), flow.model_timestep(sigma), context,
                 reference_latent=ref[:, :, 0], transformer_options=transformer_options(mask))


def window_mask(lat: LatentSet, idx: torch.Tensor, reference_itself: bool = False) -> torch.Tensor:
    """Input-aware token mask of windows ``idx`` (ref_conv tokens global; with ``reference_itself`` they attend
    to each other only, ``SparseAttentionConfig.reference_attends="itself"``)."""
    h, w = lat.x0.shape[-2:]
    return pattern_token_mask(lat.labels[idx], lat.frame_select[idx], global_before=(h // 2) * (w // 2),
                              reference_itself=reference_itself)


class TeacherStep:
    """One flow-matching step on a global batch drawn from the shared generator (this rank's slice)."""

    def __init__(self, model, lat: LatentSet, a, info: D.DistInfo, gen: torch.Generator):
        self.model, self.lat, self.a, self.gen = model, lat, a, gen
        self.my = D.rank_slice(a.batch, info)
        per = self.my.stop - self.my.start
        self.context = torch.zeros(per, a.context_tokens, 4096, device=info.device)
        self.dev = info.device

    def draw(self) -> dict[str, torch.Tensor]:
        a, g, dev, lat = self.a, self.gen, self.dev, self.lat
        B = a.batch
        idx = torch.randint(0, len(lat), (B,), generator=g, device=dev)
        use_random_ref = torch.rand(B, generator=g, device=dev) < a.ref_random_prob
        keep = (torch.rand(B, generator=g, device=dev) >= a.p_uncond).float()
        sigma = flow.sample_sigmas(B, a.shift, generator=g, device=dev)
        noise = torch.randn((B,) + tuple(lat.x0.shape[1:]), generator=g, device=dev)
        sparse = bool(torch.rand(1, generator=g, device=dev).item() < a.sparse_prob)  # same on every rank
        m = self.my
        return {"idx": idx[m], "use_random_ref": use_random_ref[m], "keep": keep[m], "sigma": sigma[m], "noise": noise[m],
                "sparse": sparse}

    def __call__(self, step: int):
        d = self.draw()
        lat = self.lat
        x0 = lat.x0[d["idx"]]
        ref = torch.where(d["use_random_ref"][:, None, None, None, None], lat.ref_random[d["idx"]], x0[:, :, :1])
        control = lat.control[d["idx"]] * d["keep"][:, None, None, None, None]
        x_t = flow.noisy_latent(x0, d["noise"], d["sigma"])
        mask = window_mask(lat, d["idx"]) if d["sparse"] else None
        with _amp(self.dev, self.a.amp):
            v = teacher_velocity(self.model, x_t, d["sigma"], control, ref, self.context, mask)
        loss = flow.flow_loss(v, x0, d["noise"])
        return loss, {"loss": loss.detach()}


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    info = D.init_distributed(a.device)
    cfg = RunConfig.from_args(a)
    dev = info.device
    configure_cuda(dev)
    t_start = time.perf_counter()
    vae, vae_card = load_vae(a.vae, device=dev)
    lat = get_latents(a, info, vae, dev)
    t_data = time.perf_counter() - t_start

    tcfg = TeacherConfig(dim=a.dim, num_layers=a.layers, ffn_dim=a.ffn)
    model = build_teacher(tcfg, seed=cfg.seed, device=dev)
    init = init_from_weights(model, a.init, "teacher") if a.init else None
    n_params = sum(p.numel() for p in model.parameters())
    log.info("teacher: %.2f M parameters, %d heads, %d windows, latent %s, data ready in %.1f s",
             n_params / 1e6, tcfg.num_heads, len(lat), tuple(lat.x0.shape[1:]), t_data)
    train_module = D.wrap_ddp(model, info)
    opt = make_optimizer(model.parameters(), cfg, dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(cfg.seed)
    runner = Runner(cfg, info, model, train_module, opt, {"data": gen}, "teacher", meta={"args": vars(a)})
    runner.resume()
    runner.run(TeacherStep(train_module, lat, a, info, gen))

    summary = {"stop_reason": runner.stop_reason, "step": runner.step, "loop_seconds": round(runner.loop_seconds, 2),
               "data_seconds": round(t_data, 2), "params_M": round(n_params / 1e6, 3), "windows": len(lat),
               "sec_per_step_median": float(np.median(runner.step_seconds[1:] or runner.step_seconds or [float("nan")])),
               "world_size": info.world_size, "ranks_in_sync": D.params_in_sync(model, info)}
    if runner.finished and info.is_main:
        summary.update(finalize(model, vae, vae_card, tcfg, a, cfg, dev,
                                {"trained_steps": runner.step,
                                 **provenance(runner.loop_seconds, dev, info.world_size, init=init)}))
    write_summary("teacher", cfg.out, summary, info, t_start)
    D.cleanup(info)
    return summary


@torch.no_grad()
def sample(model, control: torch.Tensor, ref: torch.Tensor, noise: torch.Tensor, steps: int, shift: float,
           cfg_scale: float, amp: str = "none", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euler / simple-scheduler sampling with CFG against the zero pose-video latent (same reference), as
    the shipped workflow does; ``mask`` ``[B, L, L]``: sparse self-attention."""
    both_control = torch.cat([control, torch.zeros_like(control)])
    both_ref = torch.cat([ref, ref])
    both_mask = None if mask is None else torch.cat([mask, mask])
    ctx = torch.zeros(2 * noise.shape[0], 1, 4096, device=noise.device)

    def velocity(x, s):
        with _amp(noise.device, amp):
            v = teacher_velocity(model, torch.cat([x, x]), torch.cat([s, s]), both_control, both_ref, ctx,
                                 both_mask).float()
        c, u = v.chunk(2)
        return flow.cfg_velocity(c, u, cfg_scale)

    return flow.sample_euler(velocity, noise, flow.simple_sigmas(shift, steps).to(noise.device))


def finalize(model, vae, vae_card: dict, tcfg: TeacherConfig, a, cfg: RunConfig, dev: torch.device,
             card_extra: dict | None = None) -> dict:
    """Held-out and training-window sampling PSNR, fp16 check, preview strip, export for stock UNETLoader
    (``card_extra``: provenance fields for the model card, see training/model_card.py)."""
    model.eval()
    out: dict = {}
    try:
        held = load_clips(a.data, "heldout", a.eval_windows)
    except ValueError:
        log.warning("no held-out clips in %s: evaluating on training clips", a.data)
        held = load_clips(a.data, "train", a.eval_windows)
    splits = {"heldout": held, "train": load_clips(a.data, "train", a.eval_windows)}  # side by side: over-fitting?
    for split, clips in splits.items():
        clips = [c for c in clips if len(c["frames"]) >= a.frames][: a.eval_windows]
        if not clips or a.eval_windows <= 0:
            continue
        models = [model]
        if split == "heldout" and a.init:  # the starting weights on the same windows and noise: what this stage changed
            models.append(build_teacher(tcfg, seed=cfg.seed, device=dev))
            init_from_weights(models[1], a.init, "teacher")
            models[1].eval()
        (sample_psnr, *init_psnr), vae_psnr, gt, dec = _sample_psnr(models, vae, clips, a, cfg, dev)
        del models
        out[f"{split}_sample_psnr"], out[f"{split}_vae_psnr"] = sample_psnr, vae_psnr
        out.setdefault("eval", {"windows": len(clips), "steps": a.eval_steps, "cfg": a.eval_cfg, "shift": a.shift,
                                "sparse": True})
        if init_psnr:
            out["init_heldout_sample_psnr"] = init_psnr[0]
            log.info("teacher: held-out sample PSNR of --init %.2f dB", init_psnr[0])
        if split == "heldout":
            _preview(gt[0], dec[0], Path(cfg.out) / "preview.png")
        log.info("teacher: %s sample PSNR %.2f dB (VAE reconstruction %.2f dB)", split, sample_psnr, vae_psnr)
    if dev.type == "cuda":
        out["fp16_rel_error"] = _fp16_check(model, a, dev)
    card = {"name": "IASA-mini teacher",
            "format": "Wan 2.1 DiT, Wan 2.2 Fun-Control layout with ref_conv, stock UNETLoader (WAN21 t2v)",
            "config": config_dict(tcfg), "in_channels": "0:16 noise | 16:32 pose-video latent | 32:48 empty start-image "
            "channels, normalised (Wan21.process_in) as Wan22FunControlToVideo + concat_cond give them; the reference "
            "picture's latent (ref_image -> reference_latent) becomes ref_conv tokens in front of the video",
            "sampling": {"shift": a.shift, "how": f"ModelSamplingSD3(shift={a.shift}), euler/simple, ~{a.eval_steps} "
                         f"steps, cfg ~{a.eval_cfg}; negative = Wan22FunControlToVideo with the same ref_image and no "
                         f"control_video"},
            "attention": {"trained_sparse_fraction": a.sparse_prob, "top_k": a.top_k, "causal": not a.bidirectional,
                          "how": "IASA Sparse Attention with these settings (the rest of the steps dense)"},
            "training": {"steps_planned": cfg.steps, "batch": a.batch, "frames": a.frames, "lr": cfg.lr,
                         "p_uncond": a.p_uncond, "ref_random_prob": a.ref_random_prob, "data": a.data},
            "text": "unused: the context is zeros [B, 512, 4096]",
            "vae": {k: vae_card.get(k) for k in ("name", "config", "heldout_psnr_db")},
            "eval": {k: v for k, v in out.items() if k != "eval"}, **(card_extra or {})}
    dtype = torch.bfloat16 if a.save_dtype == "bf16" else torch.float32
    out["weights"] = str(save_model(model, Path(cfg.out) / WEIGHTS_NAME, card, dtype=dtype))
    return out


@torch.no_grad()
def _sample_psnr(models: list, vae, clips: list[dict], a, cfg: RunConfig, dev: torch.device):
    """Sample the first window of each clip with each model, from the same noise (a random frame of the clip as
    the reference, sparse attention, CFG as the workflow). Returns the decoded samples' PSNR per model, the VAE
    reconstruction's PSNR, the real frames and the first model's decoded samples."""
    from .vae_train import psnr, wan21_latent_format

    fmt = wan21_latent_format()
    hl = build_latent_set(clips, vae, a.frames, 10 ** 9, dev, batch=a.encode_batch, workers=1,
                          amp=a.amp == "bf16", seed=cfg.seed + 1, pattern=pattern_config(a))
    g = torch.Generator(device=dev)
    g.manual_seed(1234)
    noise = torch.randn(hl.x0.shape, generator=g, device=dev)
    mask = window_mask(hl, torch.arange(len(hl), device=dev))
    gt = to_model_range(torch.from_numpy(np.stack([c["frames"][: a.frames] for c in clips])).to(dev))

    def decoded(x0: torch.Tensor) -> torch.Tensor:
        return torch.cat([vae.decode(fmt.process_out(x0[i:i + 1])).float() for i in range(len(x0))])

    decs = [decoded(sample(m, hl.control, hl.ref_random, noise, a.eval_steps, a.shift, a.eval_cfg, a.amp, mask))
            for m in models]
    return [psnr(d, gt) for d in decs], psnr(decoded(hl.x0), gt), gt, decs[0]


@torch.no_grad()
def _fp16_check(model, a, dev) -> float:
    """ComfyUI runs Wan in fp16 on such GPUs by default: relative error of an fp16 forward vs fp32."""
    g = torch.Generator(device=dev)
    g.manual_seed(7)
    f = (a.frames - 1) // 4 + 1
    x = torch.randn(2, 48, f, 32, 32, generator=g, device=dev)
    r = torch.randn(2, 16, 32, 32, generator=g, device=dev)
    t = torch.tensor([900.0, 300.0], device=dev)
    ctx = torch.zeros(2, 1, 4096, device=dev)
    ref = model(x, t, ctx, reference_latent=r).float()
    m16 = copy.deepcopy(model).half()
    m16.patch_embedding.float()  # as ComfyUI builds WanModel for fp16: patch_embedding stays fp32
    y = m16(x.half(), t, ctx.half(), reference_latent=r.half()).float()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-12))


def _preview(gt: torch.Tensor, gen: torch.Tensor, path: Path, n: int = 4) -> None:
    """Top row: ground truth, bottom row: sample (n frames spread over the window)."""
    import cv2

    T = gt.shape[1]
    idx = np.linspace(0, T - 1, n).round().astype(int)
    rows = []
    for v in (gt, gen):
        img = ((v[:, idx].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()
        rows.append(np.concatenate(list(img), axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(rows, axis=0)[..., ::-1])


if __name__ == "__main__":
    main()
