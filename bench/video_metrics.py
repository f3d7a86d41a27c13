"""Frame-quality numbers for generated clips against ground truth (numpy + scikit-image, no ComfyUI).

Frames are uint8 ``[T, H, W, 3]``; region masks bool ``[T, H, W]`` (the shards' face / lips / hand masks).
PSNR pools the squared error over every frame of a clip (inside a mask: over the masked pixels only);
SSIM is the mean over frames of scikit-image's SSIM on RGB.
"""
from __future__ import annotations

import math

import numpy as np

PEAK = 255.0


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of two clips, optionally only over the pixels where ``mask`` [T, H, W] is set;
    NaN when the mask is empty, ``inf`` for identical clips."""
    _check_pair(a, b)
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != a.shape[:3]:
            raise ValueError(f"psnr: mask shape {mask.shape} does not match frames {a.shape[:3]}")
        if not mask.any():
            return float("nan")
        d = d[mask]
    mse = float(d.mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(PEAK ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    _check_pair(a, b)
    return float(np.mean([structural_similarity(x, y, channel_axis=-1, data_range=PEAK) for x, y in zip(a, b)]))


def mouth_change(frames: np.ndarray, lips: np.ndarray) -> np.ndarray:
    """Per frame ``t >= 1``: mean absolute difference to frame 0 inside the union of the clip's lips masks
    (how far the mouth region moved away from the reference frame). Empty masks give NaNs."""
    region = np.asarray(lips, bool).any(axis=0)
    if not region.any():
        return np.full(len(frames) - 1, np.nan)
    f = frames.astype(np.float32)[:, region]
    return np.abs(f[1:] - f[:1]).mean(axis=(1, 2))


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant or has NaNs."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y) or len(x) < 3 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def mouth_audio_corr(frames: np.ndarray, lips: np.ndarray, energy: np.ndarray) -> float:
    """Correlation between :func:`mouth_change` and the per-frame speech energy (frames 1..T-1)."""
    return correlation(mouth_change(frames, lips), np.asarray(energy)[1: len(frames)])


MOVING_REGIONS = ("face", "lips", "left_hand", "right_hand", "arms", "torso")


def moved_mask(masks: dict[str, np.ndarray]) -> np.ndarray:
    """bool ``[T, H, W]``: where the pose moved since frame 0, i.e. the pixels that entered or left one of
    the body regions (face, lips, hands, arms, torso) between frame 0 and frame t. Empty at frame 0; a
    copy of frame 0 is wrong there whenever the region's pixels differ from the background's."""
    out = None
    for name in MOVING_REGIONS:
        m = np.asarray(masks[name], bool)
        changed = m ^ m[:1]
        out = changed if out is None else out | changed
    return out


def gradient_energy(frames: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute finite difference (x and y) of the frames' luma (0..255), optionally over the pixels where
    ``mask`` [T, H, W] is set (a difference counts where its first pixel is); NaN for an empty mask."""
    y = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)   # [T, H, W]
    gx, gy = np.abs(np.diff(y, axis=2)), np.abs(np.diff(y, axis=1))
    if mask is None:
        return float((gx.mean() + gy.mean()) / 2)
    mask = np.asarray(mask, bool)
    mx, my = mask[:, :, :-1], mask[:, :-1, :]
    if not (mx.any() and my.any()):
        return float("nan")
    return float((gx[mx].mean() + gy[my].mean()) / 2)


def sharpness(gen: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """How sharp generated frames are against the real ones: :func:`gradient_energy` of ``gen`` over that of
    ``gt`` (1: as much fine detail as the real frames; below 1 blurrier, above 1 noisier or with sharper edges
    than the truth). PSNR rewards a blurred mean; this score does not (a model that blurs scores below 1)."""
    _check_pair(gen, gt)
    ref = gradient_energy(gt, mask)
    return float("nan") if not np.isfinite(ref) or ref == 0 else gradient_energy(gen, mask) / ref


def psnr_per_second(gen: np.ndarray, gt: np.ndarray, fps: float = 25.0) -> list[float]:
    """PSNR of each second of the clip; a last partial second counts when it lasts at least half a second,
    a clip shorter than a second is one entry."""
    step = max(1, int(round(fps)))
    starts = list(range(0, max(len(gt) - step, 0) + 1, step))
    tail = starts[-1] + step
    if len(gt) - tail >= step / 2:
        starts.append(tail)
    return [psnr(gen[s:s + step], gt[s:s + step]) for s in starts]


def psnr_per_frame(gen: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """:func:`psnr` of each frame; ``inf`` for a frame equal to its ground truth."""
    _check_pair(gen, gt)
    return np.array([psnr(gen[t:t + 1], gt[t:t + 1]) for t in range(len(gen))])


def clip_scores(gen: np.ndarray, gt: np.ndarray, masks: dict[str, np.ndarray], energy: np.ndarray,
                fps: float = 25.0) -> dict:
    """Every number of one clip: psnr, ssim, psnr_face, psnr_mouth, psnr_hands, psnr_moved (where the pose
    moved, :func:`moved_mask`), mouth_audio_corr, psnr_per_second and its last-minus-first drift, the
    worst frame (its PSNR and index), and :func:`sharpness` over the frame and inside face and hands."""
    hands = np.asarray(masks["left_hand"], bool) | np.asarray(masks["right_hand"], bool)
    per_second = psnr_per_second(gen, gt, fps)
    per_frame = psnr_per_frame(gen, gt)
    worst = int(np.argmin(per_frame))
    return {"psnr": psnr(gen, gt), "ssim": ssim(gen, gt), "psnr_face": psnr(gen, gt, masks["face"]),
            "psnr_mouth": psnr(gen, gt, masks["lips"]), "psnr_hands": psnr(gen, gt, hands),
            "psnr_moved": psnr(gen, gt, moved_mask(masks)),
            "mouth_audio_corr": mouth_audio_corr(gen, masks["lips"], energy),
            "psnr_last_minus_first_second": (per_second[-1] - per_second[0]) if len(per_second) > 1 else float("nan"),
            "psnr_per_second": [round(v, 3) for v in per_second],
            "psnr_worst_frame": float(per_frame[worst]), "worst_frame": worst,
            "sharpness": sharpness(gen, gt), "sharpness_face_hands": sharpness(gen, gt, hands | np.asarray(masks["face"], bool))}


def mean_scores(per_clip: list[dict], keys: tuple[str, ...]) -> dict:
    """Mean of each key over clips, ignoring NaN (e.g. a clip without visible hands); None if all NaN."""
    out = {}
    for k in keys:
        vals = np.array([c[k] for c in per_clip], np.float64)
        vals = vals[np.isfinite(vals)]
        out[k] = round(float(vals.mean()), 4) if len(vals) else None
    return out


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"frames must be two [T, H, W, 3] arrays of one shape, got {a.shape} and {b.shape}")
