"""Run-2 teacher on held-out windows: sample PSNR at CFG 1 and 3, and the copy-the-reference baseline.

Record of a one-off CPU check (2026-12-02, ~7 min on 2 cores): `python docs/training/v2_run2/cfg_probe.py 2` with
the run-2 files joined into .dev/v2got/ (vae_long.safetensors, teacher.safetensors). Not imported by the pack."""
import sys, time, torch, numpy as np
import pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3])); import iasa_cli; iasa_cli.register_package()
from iasa.training.tiny_wan import load_vae, load_teacher
from iasa.training.clips import load_clips, to_model_range
from iasa.training.teacher_data import build_latent_set
from iasa.training.teacher_train import sample, window_mask, parse_args, pattern_config
from iasa.training.vae_train import psnr, wan21_latent_format
torch.set_num_threads(2)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2
vae = load_vae(".dev/v2got/vae_long.safetensors")[0].eval()
model = load_teacher(".dev/v2got/teacher.safetensors")[0].eval()
a = parse_args(["--data", ".dev/synth/shards", "--vae", "x", "--frames", "49"])
clips = [c for c in load_clips(".dev/synth/shards", "heldout", 8) if len(c["frames"]) >= 49][:n]
fmt = wan21_latent_format()
with torch.no_grad():
    hl = build_latent_set(clips, vae, 49, 10**9, torch.device("cpu"), batch=1, workers=1, amp=False, seed=1, pattern=pattern_config(a))
    gt = to_model_range(torch.from_numpy(np.stack([c["frames"][:49] for c in clips])))
    rec = torch.cat([vae.decode(fmt.process_out(hl.x0[i:i+1])).float() for i in range(n)])
    ref_px = torch.cat([vae.decode(fmt.process_out(hl.ref_random[i:i+1])).float() for i in range(n)])
    print("vae recon %.2f  copy-ref baseline %.2f" % (psnr(rec, gt), psnr(ref_px[:, :, :1].expand_as(gt), gt)), flush=True)
    g = torch.Generator().manual_seed(1234); noise = torch.randn(hl.x0.shape, generator=g)
    mask = window_mask(hl, torch.arange(n))
    for cfg in (1.0, 3.0):
        t = time.time()
        x0 = sample(model, hl.control, hl.ref_random, noise, 20, 3.0, cfg, "none", mask)
        dec = torch.cat([vae.decode(fmt.process_out(x0[i:i+1])).float() for i in range(n)])
        colour = (dec.mean((2, 3, 4)) - gt.mean((2, 3, 4))).abs().mean()
        print("cfg %.1f: sample %.2f dB, latent mse to x0 %.3f, mean colour error %.3f (%.0f s)" % (cfg, psnr(dec, gt), float((x0 - hl.x0).square().mean()), float(colour), time.time()-t), flush=True)
