"""Probe (2026-12-07): does mouth_audio_corr on long clips measure drift rather than the mouth? Scores the real
frames, the VAE round trip (one-pass decode) and a noisy copy of frame 0 with the original score, with both signals
detrended by a 13- or 25-frame moving average, and with frame-to-frame change against energy change.

    N=169 K=2 .iasa/venv/bin/python docs/training/session_2026_12_07/mouth_metric_probe.py   # ~12 min, 2 cores
"""
import json, os, pathlib, sys, time
ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT)); import iasa_cli; iasa_cli.register_package()   # noqa: E402,E702
import numpy as np
sys.argv = sys.argv[:1]
from iasa.bench.quality import pick_clips, stock_vae, _saved, REPO
from iasa.bench.video_metrics import mouth_change, correlation, psnr
import torch

def detrend(x, w):
    x = np.asarray(x, np.float64)
    pad = w // 2
    xp = np.pad(x, pad, mode="reflect")
    k = np.ones(w) / w
    return x - np.convolve(xp, k, mode="valid")[: len(x)]

def variants(frames, lips, energy):
    mc = mouth_change(frames, lips); e = np.asarray(energy, np.float64)[1:len(frames)]
    out = {"orig": correlation(mc, e)}
    for w in (13, 25):
        out[f"detrend{w}"] = correlation(detrend(mc, w), detrend(e, w))
    region = np.asarray(lips, bool).any(axis=0)
    f = frames.astype(np.float32)[:, region]
    d = np.abs(f[1:] - f[:-1]).mean(axis=(1, 2))
    out["step"] = correlation(d, np.abs(np.diff(np.asarray(energy, np.float64)[:len(frames)])))
    return out

frames_n = int(os.environ.get("N", "169")); k = int(os.environ.get("K", "2"))
clips = pick_clips(REPO / ".dev/synth/shards", k, frames_n)
vae = stock_vae(REPO / "models/vae/iasa_mini_vae.safetensors")
for c in clips:
    gt = c["frames"]; n = len(gt)
    t0 = time.time()
    with torch.inference_mode():
        x = torch.from_numpy(gt).float() / 255.0
        rec = _saved(vae.decode(vae.encode(x)), n)
    copy = np.repeat(gt[:1], n, axis=0)
    r = {"id": c["id"], "gt": variants(gt, c["masks"]["lips"], c["energy"]),
         "vae": variants(rec, c["masks"]["lips"], c["energy"]),
         "copy_plus_noise": variants(np.clip(copy.astype(np.int16) + np.random.default_rng(0).integers(-3, 4, copy.shape), 0, 255).astype(np.uint8), c["masks"]["lips"], c["energy"]),
         "vae_psnr": psnr(rec, gt), "s": round(time.time() - t0, 1)}
    print(json.dumps(r, default=lambda v: round(float(v), 3))); sys.stdout.flush()
