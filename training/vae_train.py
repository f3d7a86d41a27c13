"""Train the IASA-mini VAE: ComfyUI's Wan 2.1 ``WanVAE`` at a small width, on synthetic clips.

Loss: L1 + L2 + an edge (finite-difference) term on random crops of short windows, through ComfyUI's own
chunked causal ``encode``/``decode`` (1 + 4 + 4 ... frames), tiny KL on the encoder's (mu, logvar).
After training, the latents are calibrated to ComfyUI's ``latent_formats.Wan21`` statistics: a per-channel
affine folded into the encoder's output conv and its inverse into the decoder's input conv, so the
stock ``process_in`` gives zero-mean, unit-variance latents on the calibration clips and
``decode(encode(x))`` is unchanged. The result loads with stock ``VAELoader``.

CPU smoke run (seconds)::

    python iasa_cli.py training.vae_train --data procedural:6:9 --out .dev/runs/vae-smoke --dim 8 \\
        --frames 5 --crop 32 --batch 2 --steps 4 --log-every 2 --eval-clips 1 --calib-clips 2 --device cpu

H200, 4 minutes of training (``--steps 0``: the step count is measured from the first 25 steps so the
cosine schedule ends with the budget; shards from ``training.synth.build render``)::

    python iasa_cli.py training.vae_train --data .dev/synth/shards --out .dev/runs/vae --dim 32 \\
        --frames 9 --crop 128 --batch 16 --steps 0 --max-minutes 4 --lr 1e-3

Several GPUs: ``torchrun --nproc_per_node=N iasa_cli.py training.vae_train ...`` (``--batch`` is global).
Outputs in ``--out``: ``iasa_mini_vae.safetensors`` (+ ``.json`` card), ``vae_loss.csv/.json/.png``,
``summary.json``, ``checkpoints/``. A rerun with the same ``--out`` resumes from the last checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from . import distributed as D
from .clips import FrameBank, eval_clips, eval_window, load_clips
from .model_card import provenance
from .runner import RunConfig, Runner, check_window_args, configure_cuda, make_optimizer, write_summary
from .tiny_wan import VAEConfig, build_vae, config_dict, fold_latent_affine, init_from_weights, save_model
from .vae_parallel import decode_parallel, encode_parallel
from .vae_stream import WarmSchedule, WarmWindows, warm_autoencode, warm_start_frame

log = logging.getLogger(__name__)
WEIGHTS_NAME = "iasa_mini_vae.safetensors"


class AutoEncoder(torch.nn.Module):
    """``x -> (reconstruction, mu, logvar)``: the VAE's own chunked encode/decode, or (``parallel``, the
    default) the equal whole-window pass of training/vae_parallel.py; a hook on the encoder's output conv
    reads logvar, which ``WanVAE.encode`` drops. ``warm > 0``: the frames after the first ``warm`` latent
    frames, with the caches filled by those (training/vae_stream.py)."""

    def __init__(self, vae: torch.nn.Module, parallel: bool = True):
        super().__init__()
        self.vae = vae
        self._encode = (lambda x: encode_parallel(vae, x)) if parallel else vae.encode
        self._decode = (lambda z: decode_parallel(vae, z)) if parallel else vae.decode
        self._conv1_out: torch.Tensor | None = None
        vae.conv1.register_forward_hook(self._keep)

    def _keep(self, _m, _inp, out):
        self._conv1_out = out

    def forward(self, x: torch.Tensor, warm: int = 0):
        if warm:   # the first ``warm`` latent frames only fill the caches (training/vae_stream.py)
            return warm_autoencode(self.vae, x, warm)
        mu = self._encode(x)
        logvar = self._conv1_out[:, self.vae.z_dim:]
        self._conv1_out = None
        return self._decode(mu), mu, logvar


def recon_losses(rec: torch.Tensor, x: torch.Tensor, regions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """L1, L2 and edge terms over all pixels; with ``regions`` (0/1 ``[B, 1, T, H, W]``) also ``region``: L1 + L2
    over the region pixels only (their mean, so the term's scale does not depend on how much of the crop the
    regions cover; 0 where no crop holds a region pixel)."""
    rec, x = rec.float(), x.float()
    d = rec - x
    edge = (((rec[..., 1:, :] - rec[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean()
            + ((rec[..., 1:] - rec[..., :-1]) - (x[..., 1:] - x[..., :-1])).abs().mean()) * 0.5
    out = {"l1": d.abs().mean(), "l2": (d * d).mean(), "edge": edge}
    if regions is not None:
        per_pixel = (d.abs() + d * d).mean(1, keepdim=True)
        out["region"] = (per_pixel * regions).sum() / regions.sum().clamp_min(1.0)
    return out


def kl_term(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    mu, logvar = mu.float(), logvar.float().clamp(-30, 20)
    return 0.5 * torch.mean(mu * mu + logvar.exp() - 1.0 - logvar)


def autocast(device: torch.device, amp: str):
    enabled = amp == "bf16" and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def encode_batches(vae, x: torch.Tensor, batch: int, amp: str = "none") -> torch.Tensor:
    with autocast(x.device, amp):
        return torch.cat([vae.encode(x[i:i + batch]).float() for i in range(0, len(x), batch)])


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor, batch: int, amp: str = "none") -> torch.Tensor:
    out = []
    with autocast(x.device, amp):
        for i in range(0, len(x), batch):
            out.append(vae.decode(vae.encode(x[i:i + batch])).float())
    return torch.cat(out)


def psnr(rec: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean per-clip PSNR (dB) in 0..1 image space, with ComfyUI's output clamp; with ``mask`` (0/1
    ``[B, 1, T, H, W]``) over the masked pixels only (clips without masked pixels left out)."""
    a = ((rec.float() + 1) / 2).clamp(0, 1)
    b = ((x.float() + 1) / 2).clamp(0, 1)
    if mask is None:
        mse = ((a - b) ** 2).flatten(1).mean(1)
    else:
        count = mask.flatten(1).sum(1) * a.shape[1]
        keep = count > 0
        if not keep.any():
            return float("nan")
        mse = (((a - b) ** 2) * mask).flatten(1).sum(1)[keep] / count[keep]
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean())


def psnr_per_second(rec: torch.Tensor, x: torch.Tensor, fps: int = 25) -> list[float]:
    """PSNR (dB) of ``[B, C, T, H, W]`` clips per ``fps`` frames (the last group may be shorter), from the mean
    squared error over clips and frames of the group: does the reconstruction fall off along the window?"""
    a = ((rec.float() + 1) / 2).clamp(0, 1)
    b = ((x.float() + 1) / 2).clamp(0, 1)
    mse = ((a - b) ** 2).mean(dim=(0, 1, 3, 4))   # [T]
    return [round(float(10 * torch.log10(1.0 / mse[i:i + fps].mean().clamp_min(1e-12))), 2)
            for i in range(0, mse.numel(), fps)]


@torch.no_grad()
def latent_stats(vae, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean / std of ``encode`` over clips ``x`` (float64)."""
    mu = encode_batches(vae, x, batch).double()
    flat = mu.transpose(0, 1).reshape(mu.shape[1], -1)
    return flat.mean(1), flat.std(1, unbiased=False)


def wan21_latent_format():
    from .comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.latent_formats

    return comfy.latent_formats.Wan21()


@torch.no_grad()
def calibrate(vae, x: torch.Tensor, batch: int) -> dict:
    """Fold the affine that maps this VAE's latents on ``x`` to Wan21's mean/std; returns the numbers."""
    fmt = wan21_latent_format()
    target_mean = fmt.latents_mean.flatten().double()
    target_std = fmt.latents_std.flatten().double() / fmt.scale_factor
    mean, std = latent_stats(vae, x, batch)
    std = std.clamp_min(1e-6)
    scale = target_std / std.cpu()
    shift = target_mean - scale * mean.cpu()
    fold_latent_affine(vae, scale, shift)
    return {"raw_mean": mean.tolist(), "raw_std": std.tolist(), "scale": scale.tolist(), "shift": shift.tolist()}


@torch.no_grad()
def normalised_stats(vae, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean / std per channel of ``Wan21.process_in(encode(x))`` (what the DiT sees)."""
    fmt = wan21_latent_format()
    lat = fmt.process_in(encode_batches(vae, x, batch).double().cpu())
    flat = lat.transpose(0, 1).reshape(lat.shape[1], -1)
    return flat.mean(1), flat.std(1, unbiased=False)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="training.vae_train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard dir/file, or procedural:N[:T[:S]]")
    p.add_argument("--dim", type=int, default=32, help="VAE width (stock loader reads it from the weights)")
    p.add_argument("--frames", type=int, default=9, help="training window (1 + 4k frames)")
    p.add_argument("--crop", type=int, default=128, help="random square crop (multiple of 8); 0 = full frames")
    p.add_argument("--batch", type=int, default=8, help="global batch (windows), split over ranks")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flips")
    p.add_argument("--l2-weight", type=float, default=1.0)
    p.add_argument("--edge-weight", type=float, default=0.5)
    p.add_argument("--kl-weight", type=float, default=1e-5)
    p.add_argument("--region-weight", type=float, default=0.0,
                   help="extra L1 + L2 inside the body regions of --regions (0: off); the held-out PSNR inside them "
                        "is reported too")
    p.add_argument("--regions", nargs="+", default=["face", "lips", "left_hand", "right_hand"],
                   help="regions (pose.regions.MASK_NAMES) the region loss and metric read: shards' masks, or "
                        "drawn from the keypoints of procedural clips")
    p.add_argument("--amp", choices=("bf16", "none"), default="bf16", help="autocast on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                   help="train through the whole-window encode/decode (equal to the stock chunked one, faster)")
    p.add_argument("--max-clips", type=int, default=0, help="cap on training clips (0 = all)")
    p.add_argument("--eval-clips", type=int, default=8, help="held-out windows for PSNR")
    p.add_argument("--eval-frames", type=int, default=17)
    p.add_argument("--calib-clips", type=int, default=32, help="training windows for latent calibration")
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--save-dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--init", default="", help="start from these exported VAE weights (fine-tuning); --dim must match")
    p.add_argument("--train-part", choices=("all", "decoder"), default="all",
                   help="'decoder' freezes the encoder, so latents (and a teacher trained on them) stay valid")
    p.add_argument("--warm-latents", type=int, default=0,
                   help="train past the causal caches' warm-up: each step first runs up to this many latent frames "
                        "(4 video frames each) without gradients, then trains --frames more (training/vae_stream.py)")
    p.add_argument("--warm-p-zero", type=float, default=0.25,
                   help="with --warm-latents: share of steps that train from a window's first frame instead")
    p.add_argument("--device", default="auto")
    RunConfig.add_args(p, out=".dev/runs/vae", steps=0, max_minutes=4.0, lr=1e-3, warmup=200, min_lr_frac=0.05,
                       log_every=50, checkpoint_every=1000)
    a = p.parse_args(argv)
    check_window_args(p, a, crop=True)
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    info = D.init_distributed(a.device)
    cfg = RunConfig.from_args(a)
    dev = info.device
    configure_cuda(dev)
    t_start = time.perf_counter()

    regions = tuple(a.regions) if a.region_weight > 0 else ()
    train_clips = load_clips(a.data, "train", a.max_clips or None, regions=regions)
    held_clips = eval_clips(a.data, train_clips, a.eval_clips, a.eval_frames, regions=tuple(a.regions))
    warm = WarmSchedule(a.warm_latents, a.warm_p_zero, seed=cfg.seed)
    bank = FrameBank(train_clips, warm.window(a.frames), dev)
    log.info("vae: %d training clips, %d windows of the longest %d frames (%d trained, up to %d warm latents), frames %dx%d; "
             "data loaded in %.1f s", len(train_clips), bank.n_windows, bank.window, a.frames, a.warm_latents,
             bank.height, bank.width, time.perf_counter() - t_start)
    del train_clips

    vae = build_vae(VAEConfig(dim=a.dim), seed=cfg.seed, device=dev)
    init = init_from_weights(vae, a.init, "VAE") if a.init else None
    trainable = trainable_parameters(vae, a.train_part)
    if a.channels_last:
        vae = vae.to(memory_format=torch.channels_last_3d)
    ae = AutoEncoder(vae, parallel=a.parallel)
    train_module = D.wrap_ddp(ae, info)
    opt = make_optimizer(trainable, cfg, dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(cfg.seed)
    runner = Runner(cfg, info, vae, train_module, opt, {"data": gen}, "vae",
                    meta={"args": {k: v for k, v in vars(a).items()}})
    runner.resume()
    my = D.rank_slice(a.batch, info)
    crop = a.crop or None
    windows = WarmWindows(bank, a.frames, warm)

    def step_fn(step: int):
        if regions:
            x, m, w = windows.sample_with_regions(step, a.batch, crop, gen, flip=a.flip)
            m = m[my][:, :, warm_start_frame(w):]
        else:
            (x, w), m = windows.sample(step, a.batch, crop, gen, flip=a.flip), None
        x = x[my]
        if a.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with autocast(dev, a.amp):
            rec, mu, logvar = train_module(x, w) if w else train_module(x)
        parts = recon_losses(rec, x[:, :, warm_start_frame(w):], m)
        kl = kl_term(mu, logvar)
        loss = parts["l1"] + a.l2_weight * parts["l2"] + a.edge_weight * parts["edge"] + a.kl_weight * kl
        if m is not None:
            loss = loss + a.region_weight * parts["region"]
        return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}, "kl": kl.detach()}

    t_loop = time.perf_counter()
    runner.run(step_fn)
    summary = {"stop_reason": runner.stop_reason, "step": runner.step, "loop_seconds": round(runner.loop_seconds, 2),
               "sec_per_step_median": _median(runner.step_seconds[1:] or runner.step_seconds),
               "world_size": info.world_size, "ranks_in_sync": D.params_in_sync(vae, info)}
    if runner.finished and info.is_main:
        summary.update(finalize(vae, bank, held_clips, a, cfg, dev,
                                {"trained_steps": runner.step,
                                 **provenance(runner.loop_seconds, dev, info.world_size, init=init)}))
    summary["train_seconds_this_process"] = round(time.perf_counter() - t_loop, 2)
    write_summary("vae", cfg.out, summary, info, t_start, {k: v for k, v in summary.items() if k != "calibration"})
    D.cleanup(info)
    return summary


def trainable_parameters(vae, part: str) -> list[torch.nn.Parameter]:
    """All parameters, or only the decoder side (``conv2`` + ``decoder``) with the encoder frozen."""
    if part == "all":
        return list(vae.parameters())
    frozen = list(vae.encoder.parameters()) + list(vae.conv1.parameters())
    for q in frozen:
        q.requires_grad_(False)
    return list(vae.conv2.parameters()) + list(vae.decoder.parameters())


def _median(xs: list[float]) -> float:
    return float(sorted(xs)[len(xs) // 2]) if xs else float("nan")


def finalize(vae, bank: FrameBank, held_clips: list[dict], a, cfg: RunConfig, dev: torch.device,
             card_extra: dict | None = None) -> dict:
    """Held-out PSNR, latent calibration (checked), export for stock VAELoader (``card_extra``: provenance
    fields for the model card, see training/model_card.py)."""
    vae.eval()
    held = FrameBank(held_clips, eval_window(held_clips, a.eval_frames), dev)
    x_eval = held.windows(a.eval_clips)
    try:
        calib_bank = bank.with_window(held.window)
    except ValueError:
        calib_bank = bank
    x_cal = calib_bank.windows(a.calib_clips)
    out: dict = {}
    # region masks: the held-out clips carry them (not training clips standing in for missing held-out ones)
    m_eval = held.region_windows(a.eval_clips) if held.region_bits is not None else None
    rec_before = reconstruct(vae, x_eval, a.eval_batch)
    out["heldout_psnr_fp32"] = psnr(rec_before, x_eval)
    keep_latents = a.train_part == "decoder"  # the latent space must stay the one a teacher was trained on
    if keep_latents:
        out["calibration"] = "kept from --init (encoder frozen)"
    else:
        out["calibration"] = calibrate(vae, x_cal, a.eval_batch)
    m, s = normalised_stats(vae, x_cal, a.eval_batch)
    out["normalised_mean_absmax"] = float(m.abs().max())
    out["normalised_std_range"] = [float(s.min()), float(s.max())]
    rec_after = rec_before if keep_latents else reconstruct(vae, x_eval, a.eval_batch)
    out["heldout_psnr_fp32_calibrated"] = psnr(rec_after, x_eval)
    out["heldout_psnr_per_second"] = psnr_per_second(rec_after, x_eval)
    if m_eval is not None:   # inside the body regions of --regions (face and hands by default)
        out["heldout_region_psnr"] = psnr(rec_after, x_eval, m_eval)
        out["regions"] = list(a.regions)
    out["calibration_max_abs_change"] = float((rec_after - rec_before).abs().max())
    if a.init:   # the starting weights on the same held-out windows: what this stage changed
        start = build_vae(VAEConfig(dim=a.dim), init=False)
        init_from_weights(start, a.init, "VAE")
        rec_start = reconstruct(start.to(dev).eval(), x_eval, a.eval_batch)
        out["init_heldout_psnr"] = psnr(rec_start, x_eval)
        if m_eval is not None:
            out["init_heldout_region_psnr"] = psnr(rec_start, x_eval, m_eval)
        out["init_heldout_psnr_per_second"] = psnr_per_second(rec_start, x_eval)
        del start, rec_start
    x_train = calib_bank.windows(a.eval_clips)  # same window length: train and held-out side by side
    out["train_psnr_fp32_calibrated"] = psnr(reconstruct(vae, x_train, a.eval_batch), x_train)
    if dev.type == "cuda":  # ComfyUI runs the VAE with bf16 weights on such GPUs
        vae16 = build_vae(VAEConfig(dim=a.dim), init=False)
        vae16.load_state_dict(vae.state_dict())
        vae16 = vae16.to(device=dev, dtype=torch.bfloat16).eval()
        out["heldout_psnr_bf16_weights"] = psnr(reconstruct(vae16, x_eval.to(torch.bfloat16), a.eval_batch), x_eval)
        del vae16
    out["heldout_windows"] = [int(x_eval.shape[0]), int(x_eval.shape[2])]
    card = {"name": "IASA-mini VAE", "format": "Wan 2.1 VAE (stock VAELoader)", "config": config_dict(VAEConfig(dim=a.dim)),
            "latent_format": "comfy.latent_formats.Wan21 (calibrated: process_in gives ~zero mean, unit std)",
            "data": a.data, "frames": a.frames, "crop": a.crop, "train_part": a.train_part,
            "heldout_psnr_db": round(out["heldout_psnr_fp32_calibrated"], 3),
            "losses": {"l1": 1.0, "l2": a.l2_weight, "edge": a.edge_weight, "kl": a.kl_weight,
                       **({"region": a.region_weight, "regions": list(a.regions)} if a.region_weight > 0 else {})},
            "metrics": {k: out[k] for k in ("heldout_psnr_fp32_calibrated", "train_psnr_fp32_calibrated",
                                            "heldout_psnr_bf16_weights", "heldout_windows",
                                            "heldout_psnr_per_second", "init_heldout_psnr",
                                            "init_heldout_psnr_per_second", "heldout_region_psnr",
                                            "init_heldout_region_psnr", "regions") if k in out},
            **({"warm": {"latents": a.warm_latents, "p_zero": a.warm_p_zero}} if a.warm_latents else {}),
            **(card_extra or {})}
    dtype = torch.bfloat16 if a.save_dtype == "bf16" else torch.float32
    path = save_model(vae, Path(cfg.out) / WEIGHTS_NAME, card, dtype=dtype)
    out["weights"] = str(path)
    log.info("vae: held-out PSNR %.2f dB (after calibration %.2f dB); saved %s", out["heldout_psnr_fp32"],
             out["heldout_psnr_fp32_calibrated"], path)
    return out


if __name__ == "__main__":
    main()
