"""A latent-to-RGB linear map for ComfyUI's Latent2RGB previews, fitted to a VAE, stored as a small JSON file.

ComfyUI 0.3.75 draws sampling previews (``--preview-method auto`` or ``latent2rgb``) with
``latent_format.latent_rgb_factors`` (one RGB row per latent channel) and ``latent_rgb_factors_bias`` of the
model's latent format, applied to the model-space latent of the first frame (``latent_preview.py``). The
factors of ``Wan21`` fit the real Wan 2.1 VAE, not the bundled IASA-mini VAE; this module fits them to a VAE:

    python iasa_cli.py preview.latent_rgb [--vae models/vae/iasa_mini_vae.safetensors] [--out FILE]

Rerun it when the VAE changes (the file records the VAE's sha256; a test fails when they disagree).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VAE = REPO / "models" / "vae" / "iasa_mini_vae.safetensors"
DEFAULT_FILE = REPO / "preview" / "iasa_mini_latent_rgb.json"
SPATIAL = 8   # Wan 2.1 VAE: one latent pixel per 8 x 8 image pixels


class PreviewFactorsError(ValueError):
    """A latent-to-RGB file that cannot be used."""


def fit_latent_rgb(latents: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``rgb ~ latents @ factors + bias``. ``latents`` [N, C], ``rgb`` [N, 3] in -1..1 (the
    range ComfyUI's preview maps to 0..255). Returns factors [C, 3] and bias [3]."""
    latents, rgb = np.asarray(latents, np.float64), np.asarray(rgb, np.float64)
    if latents.ndim != 2 or rgb.shape != (latents.shape[0], 3) or latents.shape[0] <= latents.shape[1] + 1:
        raise ValueError(f"fit_latent_rgb: need [N, C] latents and [N, 3] colours with N > C + 1, got "
                         f"{latents.shape} and {rgb.shape}")
    design = np.concatenate([latents, np.ones((len(latents), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, rgb, rcond=None)
    return solution[:-1], solution[-1]


def apply_latent_rgb(latents: np.ndarray, factors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.asarray(latents, np.float64) @ np.asarray(factors) + np.asarray(bias)


def file_sha256(path: str | pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_factors(path: str | pathlib.Path, factors: np.ndarray, bias: np.ndarray, meta: dict) -> pathlib.Path:
    path = pathlib.Path(path)
    data = {"latent_rgb_factors": [[round(float(v), 6) for v in row] for row in np.asarray(factors)],
            "latent_rgb_factors_bias": [round(float(v), 6) for v in np.asarray(bias)], **meta}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def read_factors(path: str | pathlib.Path, channels: int = 16) -> tuple[list, list, dict]:
    """(factors [channels][3], bias [3], the rest of the file); errors name the file and the fix."""
    path = pathlib.Path(path)
    fix = "rerun python iasa_cli.py preview.latent_rgb to write it again"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PreviewFactorsError(f"latent preview factors: {path} not found; {fix}") from None
    except json.JSONDecodeError as e:
        raise PreviewFactorsError(f"latent preview factors: {path} is not valid JSON ({e.msg}); {fix}") from None
    factors, bias = data.get("latent_rgb_factors"), data.get("latent_rgb_factors_bias")
    arr = np.asarray(factors if factors is not None else [], dtype=object)
    if arr.shape != (channels, 3) or np.asarray(bias if bias is not None else [], dtype=object).shape != (3,):
        raise PreviewFactorsError(f"latent preview factors: {path} needs latent_rgb_factors [{channels}][3] and "
                                  f"latent_rgb_factors_bias [3], got {arr.shape}; {fix}")
    if not np.isfinite(np.asarray(factors, float)).all() or not np.isfinite(np.asarray(bias, float)).all():
        raise PreviewFactorsError(f"latent preview factors: {path} holds non-finite numbers; {fix}")
    meta = {k: v for k, v in data.items() if k not in ("latent_rgb_factors", "latent_rgb_factors_bias")}
    return [list(map(float, r)) for r in factors], [float(v) for v in bias], meta


def _pictures() -> list[np.ndarray]:
    """RGB uint8 pictures the fit sees: the demo pictures, frames of the driving clip, and colour fields."""
    import av
    from PIL import Image

    demo = REPO / "assets" / "demo"
    out = []
    for name in ("synth_speaker.png", "reference.jpg"):
        with Image.open(demo / name) as im:
            out.append(np.asarray(im.convert("RGB").resize((256, 256))))
    with av.open(str(demo / "driving.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i % 10 == 0:
                out.append(np.asarray(frame.to_image().resize((256, 256))))
    rng = np.random.default_rng(0)
    for _ in range(6):   # smooth random colour fields: every hue, not only the demo's
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((256, 256), Image.BICUBIC)))
    return out


def fit_to_vae(vae_path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Encode the pictures with the VAE (ComfyUI's loader), take the model-space latents (Wan21.process_in)
    and fit them to the pictures pooled to the latent grid."""
    import torch

    from ..training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.latent_formats
    import comfy.sd
    import comfy.utils

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_path)))
    fmt = comfy.latent_formats.Wan21()
    lat_rows, rgb_rows = [], []
    for pic in _pictures():
        pixels = torch.from_numpy(np.array(pic)).float().div(255)[None]          # [1, H, W, 3], one frame
        with torch.no_grad():
            latent = fmt.process_in(vae.encode(pixels)).float()        # [1, 16, 1, H/8, W/8]
        lat = latent[0, :, 0].permute(1, 2, 0).reshape(-1, latent.shape[1]).numpy()
        h, w = latent.shape[-2:]
        pooled = pic.reshape(h, SPATIAL, w, SPATIAL, 3).mean(axis=(1, 3)) / 127.5 - 1.0
        lat_rows.append(lat)
        rgb_rows.append(pooled.reshape(-1, 3))
    del vae   # before interpreter exit: ComfyUI's patcher cleanup fails when run at shutdown
    lat, rgb = np.concatenate(lat_rows), np.concatenate(rgb_rows)
    factors, bias = fit_latent_rgb(lat, rgb)
    err = apply_latent_rgb(lat, factors, bias) - rgb
    mse = float((err ** 2).mean() / 4)   # in 0..1 image units (the colours are in -1..1)
    stock = np.asarray(fmt.latent_rgb_factors), np.asarray(fmt.latent_rgb_factors_bias)
    stock_mse = float(((apply_latent_rgb(lat, *stock) - rgb) ** 2).mean() / 4)
    meta = {"vae": vae_path.name, "vae_sha256": file_sha256(vae_path), "samples": int(len(lat)),
            "fit_psnr_db": round(10 * np.log10(1 / max(mse, 1e-12)), 2),
            "stock_wan21_factors_psnr_db": round(10 * np.log10(1 / max(stock_mse, 1e-12)), 2),
            "command": "python iasa_cli.py preview.latent_rgb"}
    return factors, bias, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", type=pathlib.Path, default=DEFAULT_VAE)
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_FILE)
    args = ap.parse_args()
    factors, bias, meta = fit_to_vae(args.vae)
    write_factors(args.out, factors, bias, meta)
    print(f"wrote {args.out}: preview PSNR {meta['fit_psnr_db']} dB against the pooled pictures "
          f"(stock Wan21 factors: {meta['stock_wan21_factors_psnr_db']} dB)")


if __name__ == "__main__":
    main()
