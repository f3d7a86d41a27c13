"""Run-3 VAE on held-out clips at several window lengths: mean per-clip PSNR and the worst single frame.

Record of a one-off CPU check (2026-12-02, 2 cores): `python docs/training/v2_run3/vae_eval.py PATH N F1 F2 ...`
(N held-out windows per length, full 256x256 frames, the whole-window pass of training/vae_parallel.py, which
equals ComfyUI's chunked WanVAE). Not imported by the pack."""
import sys, time, pathlib
import numpy as np, torch
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3])); import iasa_cli; iasa_cli.register_package()
from iasa.training.tiny_wan import load_vae
from iasa.training.clips import load_clips, to_model_range
from iasa.training.vae_parallel import encode_parallel, decode_parallel
from iasa.training.vae_train import psnr

torch.set_num_threads(2)
path, n, lengths = sys.argv[1], int(sys.argv[2]), [int(f) for f in sys.argv[3:]]
vae = load_vae(path)[0].eval()
clips = load_clips(".dev/synth/shards", "heldout", None)
for frames in lengths:
    pick = [c for c in clips if len(c["frames"]) >= frames][:n]
    clip_db, frame_db, t0 = [], [], time.time()
    with torch.no_grad():
        for c in pick:
            x = to_model_range(torch.from_numpy(np.ascontiguousarray(c["frames"][:frames]))[None])
            rec = decode_parallel(vae, encode_parallel(vae, x))
            clip_db.append(psnr(rec, x))
            se = (((rec + 1) / 2).clamp(0, 1) - ((x + 1) / 2).clamp(0, 1)) ** 2  # per frame, same clamp as psnr()
            frame_db.append((10 * torch.log10(1 / se.mean(dim=(0, 1, 3, 4)))).numpy())
    worst = np.concatenate(frame_db)
    per_pos = np.stack(frame_db).mean(0)
    print(f"{frames:4d} frames x {len(pick)} clips: PSNR {np.mean(clip_db):.2f} dB (clips {min(clip_db):.2f}-{max(clip_db):.2f}), "
          f"worst frame {worst.min():.2f} dB, first/last frame {per_pos[0]:.2f}/{per_pos[-1]:.2f} dB, {time.time() - t0:.0f} s",
          flush=True)
