"""Distil the IASA-mini tiny autoencoder (``training/tiny_vae.py``, taew2_1 layout) from the IASA-mini VAE.

Per step, on random windows and crops of the training clips, the frozen teacher VAE (``--vae``) gives raw
latents ``z = encode(x)`` and frames ``y = decode(z)`` (clamped as ComfyUI does), and:

* encoder: MSE between ``Wan21.process_in(tae.encode(x))`` and ``Wan21.process_in(z)``: the latents the DiT
  sees (normalised, unit variance per channel), so every channel counts alike;
* decoder: L1 + L2 + edge of ``tae.decode(z)`` against ``y``, the VAE's frames (not the ground truth): the
  tiny decoder is a drop-in for the VAE's on the teacher's latents (raw space, what VAEDecode passes);
* preview decoder (``--preview-decoder``, on by default): a second decoder on ``Wan21.process_in(z)`` of the
  first latent frame against ``y``'s first frame: exactly what ComfyUI's latent previewer decodes.

Outputs in ``--out``: ``iasa_mini_tiny_vae.safetensors`` (for ``models/vae``: stock VAELoader reads it as a
TAEHV with no latent scaling), ``lighttaew2_1_iasa_mini.safetensors`` (for ``models/vae_approx``: ComfyUI's
Wan 2.1 latent previews; its encoder is the same encoder with ``process_in`` folded in), both bf16 with a model
card; ``tiny_vae_loss.csv/.json/.png``, ``summary.json`` (held-out PSNRs), ``checkpoints/``. A rerun with the
same ``--out`` resumes from the last checkpoint (Runner).

CPU dry run (a minute on 2 cores; the bundled IASA-mini VAE as the teacher)::

    python iasa_cli.py training.tiny_vae_train --data procedural:4:9:32 --out .dev/runs/tiny-vae-smoke \\
        --frames 5 --crop 32 --batch 2 --steps 4 --warmup 0 --log-every 2 --eval-clips 1 --eval-frames 5 --device cpu

H200, 5 minutes of training (``--steps 0``: the step count is measured so the cosine ends with the budget)::

    python iasa_cli.py training.tiny_vae_train --data .dev/synth/shards --vae models/vae/iasa_mini_vae.safetensors \\
        --out .dev/runs/tiny_vae --frames 17 --crop 128 --batch 16 --steps 0 --max-minutes 5

Several GPUs: ``torchrun --nproc_per_node=N iasa_cli.py training.tiny_vae_train ...`` (``--batch`` is global).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed as D
from .clips import FrameBank, eval_clips, eval_window, load_clips
from .model_card import provenance
from .runner import RunConfig, Runner, check_window_args, configure_cuda, make_optimizer, write_summary
from .tiny_vae import (PREVIEW_FILE, VAE_FILE, TinyVAE, build_tiny_vae, decode_with, fold_encoder_affine,
                       save_tiny_vae)
from .tiny_wan import file_sha256, init_from_weights, load_vae
from .vae_parallel import decode_parallel, encode_parallel
from .vae_train import autocast, psnr, recon_losses, wan21_latent_format

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = REPO / "models" / "vae" / "iasa_mini_vae.safetensors"


class Distiller(torch.nn.Module):
    """The tiny autoencoder and (optionally) the preview decoder, trained together; ``forward`` runs all of
    them so DDP sees every trained parameter in one call."""

    def __init__(self, tae: TinyVAE, preview_decoder: torch.nn.Sequential | None = None):
        super().__init__()
        self.tae = tae
        self.preview = preview_decoder

    def forward(self, pixels01: torch.Tensor, z: torch.Tensor, z_norm_first: torch.Tensor | None = None):
        z_hat = self.tae.encode(pixels01)
        rec = self.tae.decode(z)
        prev = decode_with(self.preview, z_norm_first) if self.preview is not None and z_norm_first is not None else None
        return z_hat, rec, prev


class Teacher:
    """The frozen IASA-mini VAE: ``targets(x)`` -> raw latents and clamped frames (model range -1..1)."""

    def __init__(self, path: str | Path, device: torch.device, amp: str):
        self.path = Path(path)
        self.vae, self.card = load_vae(self.path, device)
        self.vae.eval().requires_grad_(False)
        self.amp = amp
        self.fmt = wan21_latent_format()

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(x.device, self.amp):
            z = encode_parallel(self.vae, x).float()  # equal to the stock chunked encode/decode, faster
            y = decode_parallel(self.vae, z).float().clamp(-1, 1)
        return z, y

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        with autocast(z.device, self.amp):
            return self.vae.decode(z).float().clamp(-1, 1)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return self.fmt.process_in(z)

    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` with ``process_in(z) = scale * z + shift`` per channel."""
        scale = self.fmt.scale_factor / self.fmt.latents_std.flatten().double()
        return scale, -self.fmt.latents_mean.flatten().double() * scale


def distill_losses(out, z_norm: torch.Tensor, y: torch.Tensor, teacher: Teacher, a) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts for one batch (see the module docstring)."""
    z_hat, rec, prev = out
    enc = F.mse_loss(teacher.normalise(z_hat.float()), z_norm)
    parts = recon_losses(rec.float() * 2 - 1, y)
    loss = a.enc_weight * enc + parts["l1"] + a.l2_weight * parts["l2"] + a.edge_weight * parts["edge"]
    metrics = {"enc_mse": enc.detach(), **{f"dec_{k}": v.detach() for k, v in parts.items()}}
    if prev is not None:
        pp = recon_losses(prev.float() * 2 - 1, y[:, :, :1])
        loss = loss + a.preview_weight * (pp["l1"] + a.l2_weight * pp["l2"] + a.edge_weight * pp["edge"])
        metrics["preview_l1"] = pp["l1"].detach()
    metrics["loss"] = loss.detach()
    return loss, metrics


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="training.tiny_vae_train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard dir/file, or procedural:N[:T[:S]]")
    p.add_argument("--vae", default=str(DEFAULT_TEACHER), help="the IASA-mini VAE to distil (stock Wan 2.1 VAE file)")
    p.add_argument("--frames", type=int, default=17, help="training window (1 + 4k frames)")
    p.add_argument("--crop", type=int, default=128, help="random square crop (multiple of 8); 0 = full frames")
    p.add_argument("--batch", type=int, default=16, help="global batch (windows), split over ranks")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flips")
    p.add_argument("--enc-weight", type=float, default=1.0, help="encoder MSE (normalised latents)")
    p.add_argument("--l2-weight", type=float, default=1.0)
    p.add_argument("--edge-weight", type=float, default=0.5)
    p.add_argument("--preview-decoder", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the latent-preview decoder (normalised latents, first latent frame)")
    p.add_argument("--preview-weight", type=float, default=0.5)
    p.add_argument("--amp", choices=("bf16", "none"), default="bf16", help="autocast on CUDA")
    p.add_argument("--max-clips", type=int, default=0, help="cap on training clips (0 = all)")
    p.add_argument("--eval-clips", type=int, default=8, help="held-out windows for the PSNRs")
    p.add_argument("--eval-frames", type=int, default=17)
    p.add_argument("--eval-batch", type=int, default=2)
    p.add_argument("--init", default="", help="start from these exported tiny VAE weights (fine-tuning)")
    p.add_argument("--device", default="auto")
    RunConfig.add_args(p, out=".dev/runs/tiny_vae", steps=0, max_minutes=5.0, lr=5e-4, warmup=200,
                       min_lr_frac=0.05, log_every=50, checkpoint_every=1000)
    a = p.parse_args(argv)
    check_window_args(p, a, ("frames", "eval_frames"), crop=True)
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    info = D.init_distributed(a.device)
    cfg = RunConfig.from_args(a)
    dev = info.device
    configure_cuda(dev)
    t_start = time.perf_counter()
    teacher = Teacher(a.vae, dev, a.amp)
    train_clips = load_clips(a.data, "train", a.max_clips or None)
    held_clips = eval_clips(a.data, train_clips, a.eval_clips, a.eval_frames)
    bank = FrameBank(train_clips, a.frames, dev)
    log.info("tiny_vae: %d training clips, %d windows of %d frames, %dx%d; teacher %s", len(train_clips),
             bank.n_windows, a.frames, bank.height, bank.width, teacher.path.name)
    del train_clips

    tae = build_tiny_vae(seed=cfg.seed, device=dev)
    init = init_from_weights(tae, a.init, "tiny VAE") if a.init else None
    preview = build_tiny_vae(seed=cfg.seed + 1, device=dev).decoder if a.preview_decoder else None
    distiller = Distiller(tae, preview)
    train_module = D.wrap_ddp(distiller, info)
    opt = make_optimizer([p for p in distiller.parameters() if p.requires_grad], cfg, dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(cfg.seed)
    runner = Runner(cfg, info, distiller, train_module, opt, {"data": gen}, "tiny_vae",
                    meta={"args": dict(vars(a))})
    runner.resume()
    my = D.rank_slice(a.batch, info)
    crop = a.crop or None

    def step_fn(step: int):
        x = bank.sample(a.batch, crop, gen, flip=a.flip)[my]
        z, y = teacher.targets(x)
        z_norm = teacher.normalise(z)
        with autocast(dev, a.amp):
            out = train_module((x + 1) / 2, z, z_norm[:, :, :1] if preview is not None else None)
        return distill_losses(out, z_norm, y, teacher, a)

    t_loop = time.perf_counter()
    runner.run(step_fn)
    summary = {"stop_reason": runner.stop_reason, "step": runner.step, "loop_seconds": round(runner.loop_seconds, 2),
               "world_size": info.world_size, "ranks_in_sync": D.params_in_sync(distiller, info)}
    if runner.finished and info.is_main:
        summary.update(finalize(distiller, teacher, held_clips, a, cfg, dev,
                                {"trained_steps": runner.step,
                                 **provenance(runner.loop_seconds, dev, info.world_size, init=init)}))
    summary["train_seconds_this_process"] = round(time.perf_counter() - t_loop, 2)
    write_summary("tiny_vae", cfg.out, summary, info, t_start)
    D.cleanup(info)
    return summary


@torch.no_grad()
def heldout_metrics(distiller: Distiller, teacher: Teacher, x_eval: torch.Tensor, batch: int, amp: str) -> dict:
    """PSNRs (dB, mean over windows) of the tiny autoencoder against the teacher VAE and the frames:
    ``decoder_vs_vae``: tiny decode of the VAE's latents vs the VAE's decode (what VAEDecode swaps);
    ``roundtrip_vs_vae`` / ``roundtrip_vs_frames``: tiny encode + tiny decode; ``vae_vs_frames``: the VAE itself;
    ``encoder_vs_vae``: the VAE's decode of the tiny encoder's latents; ``preview_vs_vae``: the preview decoder
    on the first latent frame (normalised) vs the VAE's first frame; ``encoder_rmse_normalised``."""
    sums: dict[str, float] = {}
    n = 0
    for i in range(0, len(x_eval), batch):
        x = x_eval[i:i + batch]
        z, y = teacher.targets(x)
        with autocast(x.device, amp):
            z_hat, rec, prev = distiller((x + 1) / 2, z, teacher.normalise(z)[:, :, :1])
            rt = distiller.tae.decode(z_hat.float())
        z_hat = z_hat.float()
        vals = {"decoder_vs_vae": psnr(rec * 2 - 1, y), "roundtrip_vs_vae": psnr(rt * 2 - 1, y),
                "roundtrip_vs_frames": psnr(rt * 2 - 1, x), "vae_vs_frames": psnr(y, x),
                "encoder_vs_vae": psnr(teacher.decode(z_hat), y),
                "encoder_rmse_normalised": float((teacher.normalise(z_hat) - teacher.normalise(z)).pow(2).mean().sqrt())}
        if prev is not None:
            vals["preview_vs_vae"] = psnr(prev * 2 - 1, y[:, :, :1])
        for k, v in vals.items():
            sums[k] = sums.get(k, 0.0) + v * len(x)
        n += len(x)
    return {k: round(v / n, 3) for k, v in sums.items()}


def preview_model(distiller: Distiller, teacher: Teacher) -> TinyVAE:
    """The preview file's network: the trained encoder with ``process_in`` folded in, the preview decoder."""
    out = build_tiny_vae(init=False)
    out.encoder.load_state_dict(distiller.tae.encoder.state_dict())
    out.decoder.load_state_dict(distiller.preview.state_dict())
    out = out.to(next(distiller.parameters()).device)
    fold_encoder_affine(out, *teacher.normalisation())
    return out


def finalize(distiller: Distiller, teacher: Teacher, held_clips: list[dict], a, cfg: RunConfig,
             dev: torch.device, card_extra: dict | None = None) -> dict:
    """Held-out PSNRs, then both files for stock ComfyUI (bf16, model cards)."""
    distiller.eval()
    held = FrameBank(held_clips, eval_window(held_clips, a.eval_frames), dev)
    x_eval = held.windows(a.eval_clips)
    metrics = heldout_metrics(distiller, teacher, x_eval, a.eval_batch, a.amp)
    common = {"format": "TAEHV, taew2_1 layout (16 latent channels); stock VAELoader reads it as TAEHV with "
                        "latent_format None (no scaling): bf16, never fp16",
              "teacher_vae": {"file": teacher.path.name, "sha256": file_sha256(teacher.path)},
              "trained_steps": cfg.steps, "data": a.data, "frames": a.frames, "crop": a.crop,
              "losses": {"enc_mse": a.enc_weight, "l1": 1.0, "l2": a.l2_weight, "edge": a.edge_weight,
                         "preview": a.preview_weight if distiller.preview is not None else 0.0},
              "heldout_windows": [int(x_eval.shape[0]), int(x_eval.shape[2])], **(card_extra or {})}
    out: dict = {"heldout": metrics}
    card = {"name": "IASA-mini tiny VAE", "use": "models/vae: stock VAELoader -> VAEEncode / VAEDecode",
            "latent_space": "raw (ComfyUI LATENT, what the IASA-mini VAE encodes to and VAEDecode passes)",
            "heldout_psnr_db": metrics["decoder_vs_vae"], "metrics": metrics, **common}
    out["weights"] = str(save_tiny_vae(distiller.tae, Path(cfg.out) / VAE_FILE, card))
    if distiller.preview is not None:
        pm = preview_model(distiller, teacher)
        x0 = x_eval[:1]
        with torch.no_grad():
            fold_err = (pm.encode((x0 + 1) / 2) - teacher.normalise(distiller.tae.encode((x0 + 1) / 2))).abs().max()
        out["preview_fold_max_abs_error"] = float(fold_err)
        pcard = {"name": "IASA-mini tiny VAE, latent-preview decoder",
                 "use": "models/vae_approx: ComfyUI's Wan 2.1 latent previews (file name starts with lighttaew2_1)",
                 "latent_space": "normalised (comfy.latent_formats.Wan21.process_in: the sampler's x0)",
                 "trained_on": "the first latent frame of each window (what latent_preview decodes)",
                 "heldout_psnr_db": metrics.get("preview_vs_vae"), "metrics": metrics, **common}
        out["preview_weights"] = str(save_tiny_vae(pm, Path(cfg.out) / PREVIEW_FILE, pcard))
    log.info("tiny_vae: held-out %s; saved %s", metrics, out["weights"])
    return out


if __name__ == "__main__":
    main()
