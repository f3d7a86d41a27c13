"""Does the IASA-mini VAE decoder lean on a clip's first (key) latent for many frames after it? (one-off CPU check,
2026-12-06; not imported by the pack)

    python docs/training/session_2026_12_06b/keyframe_diag.py heldout_00000    # ~3 min on 2 cores; output in keyframe_diag.txt

Frames 92-168 of a held-out clip encoded as a clip of their own (so their first frame is the key frame), then
decoded with that key latent as it is, zeroed, or swapped for the key latent of frame 0; and with latents 1-5
zeroed. PSNR per 12 frames."""
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


def per_12(rec, ref):
    rec = rec.reshape(-1, *ref.shape[1:])[: len(ref)].clamp(0, 1)
    p = 10 * torch.log10(1 / ((rec - ref) ** 2).mean((1, 2, 3)))
    return [round(float(p[i:i + 12].mean()), 2) for i in range(0, len(p), 12)]


xs = x[92:]
zs = vae.encode(xs)
print("fresh 92-168 decode:", per_12(vae.decode(zs), xs), flush=True)
z0 = zs.clone(); z0[:, :, 0] = 0  # noqa: E702
print("keyframe latent zeroed:", per_12(vae.decode(z0), xs), flush=True)
z1 = zs.clone(); z1[:, :, 0] = vae.encode(x[:1])[:, :, 0]  # noqa: E702
print("keyframe latent = frame 0's:", per_12(vae.decode(z1), xs), flush=True)
z2 = zs.clone(); z2[:, :, 1:6] = 0  # noqa: E702
print("latents 1-5 zeroed:", per_12(vae.decode(z2), xs), flush=True)
