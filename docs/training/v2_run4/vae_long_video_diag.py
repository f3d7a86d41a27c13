"""Why the shipped v2 VAE falls off after ~5 s of a 169-frame clip (record of a one-off CPU check, 2026-12-02).

    python docs/training/v2_run4/vae_long_video_diag.py heldout_00000     # ~8 min on 2 cores; output in vae_long_video_diag.txt

1. stock full encode + decode (what VAEDecode does), per-second PSNR;
2. temporally tiled decode / encode (stock VAE.decode_tiled / encode_tiled, 64-frame tiles): does tiling avoid it?
3. the last 73 frames as a clip of their own: content or position?
4. encoder or decoder: the tail latents of the full encode vs a fresh encode of frames 92-168 (the encoder is
   causal: they should agree once the fresh encode is past its own start), and the full pass decoding the fresh
   tail latents. Not imported by the pack."""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3])); import iasa_cli; iasa_cli.register_package()  # noqa: E401,E702
from iasa.bench.quality import stock_vae  # noqa: E402
from iasa.training.clips import load_clips  # noqa: E402

torch.set_num_threads(2); torch.set_grad_enabled(False)  # noqa: E702
vae = stock_vae(pathlib.Path("models/vae/iasa_mini_vae.safetensors"))
clip = [c for c in load_clips(".dev/synth/shards", "heldout") if c["id"] == sys.argv[1]][0]
x = torch.from_numpy(clip["frames"][:169]).float() / 255.0


def per_second(rec, ref=x):
    rec = rec.reshape(-1, *ref.shape[1:])[: len(ref)].clamp(0, 1)
    p = 10 * torch.log10(1 / ((rec - ref) ** 2).mean((1, 2, 3)))
    return [round(float(p[i:i + 25].mean()), 2) for i in range(0, len(p), 25)]


z = vae.encode(x)  # [1, 16, 43, h, w]; latent j >= 1 covers frames 4j-3 .. 4j
print("1. full encode, full decode:", per_second(vae.decode(z)), flush=True)
tiles = dict(tile_x=32, tile_y=32, overlap=8, tile_t=16, overlap_t=4)
print("2. full encode, decode in 64-frame tiles:", per_second(vae.decode_tiled(z, **tiles)), flush=True)
zt = vae.encode_tiled(x, tile_x=256, tile_y=256, overlap=64, tile_t=64, overlap_t=16)
print("2. encode and decode in 64-frame tiles:", per_second(vae.decode_tiled(zt, **tiles)), flush=True)
for start in (96, 0):
    xs = x[start:start + 73]
    print(f"3. frames {start}-{start + 72} as their own clip:", per_second(vae.decode(vae.encode(xs)), xs), flush=True)
zs = vae.encode(x[92:])  # latent i >= 1 covers frames 92+4i-3 .. 92+4i = full latent 23+i
print("4. relative difference of latents 24, 27, ... 42 (full vs fresh encode):",
      [round(float((z[:, :, 23 + i] - zs[:, :, i]).norm() / z[:, :, 23 + i].norm()), 3) for i in range(1, 20, 3)])
mixed = torch.cat([z[:, :, :24], zs[:, :, 1:]], dim=2)
print("4. fresh tail latents decoded in the full 169-frame pass:", per_second(vae.decode(mixed)), flush=True)
