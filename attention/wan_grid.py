"""The token grid of a Wan call, read from what ComfyUI hands the model: at sampling time from the latent
``x`` and the extra conditioning (:func:`grid_from_call`), at node time from the CONDITIONING a stock Wan
node built (:func:`grid_from_conditioning`), else from an explicit video size (:func:`preview_grid`).

Extra tokens and frames (see :class:`TokenGrid`), by model type and stock node:

- Wan 2.1 Fun 1.1 / 2.2 Fun (``ref_conv``), ``Wan22FunControlToVideo``'s ``ref_image``: ``reference_latent``
  -> Hp*Wp tokens before the video;
- ``WanVaceToVideo`` with a ``reference_image``: its latent starts with the reference frame, marked by an
  all-zero VACE mask -> leading reference frame(s);
- Wan-Animate (``WanAnimateToVideo``): latent frame 0 is the reference image; with ``continue_motion`` the
  next frames continue the previous chunk, marked by a zero ``concat_mask`` (ones in the model's mask
  channels) -> leading frames, the continued ones counted in ``continued_frames``;
- Phantom (``WanPhantomSubjectToVideo``): ``time_dim_concat`` frames after the video.

No ComfyUI import: everything here takes tensors and plain objects.
"""
from __future__ import annotations

import torch

from .grid import TokenGrid

WAN_PATCH = (1, 2, 2)


def wan_token_px(base_model) -> int:
    """Pixels per token side: 16 for Wan 2.1 / 2.2-14B (VAE 8x), 32 for Wan 2.2-TI2V-5B (VAE 16x, 48 ch)."""
    channels = getattr(getattr(base_model, "latent_format", None), "latent_channels", 16)
    return 32 if channels == 48 else 16


def is_animate(dm) -> bool:
    return "Animate" in type(dm).__name__


def leading_zero_frames(mask: torch.Tensor, start: int = 0) -> int:
    """Consecutive frames from ``start`` (dim 2 of ``[B, C, T, H, W]``) in which ``mask`` is all zero."""
    per_frame = mask.detach().float().abs().amax(dim=(0, 1, 3, 4))
    n = 0
    for v in per_frame[start:].tolist():
        if v > 1e-6:
            break
        n += 1
    return n


def animate_continued_frames_from_concat(c_concat: torch.Tensor | None) -> int:
    """Continue-motion latent frames of a Wan-Animate call: after the reference frame, the leading frames
    whose mask channels (the first 4 of ``c_concat``, ``1 - concat_mask``) are all one."""
    if c_concat is None or c_concat.ndim != 5 or c_concat.shape[1] < 4:
        return 0
    return leading_zero_frames(1.0 - c_concat[:, :4], start=1)


def grid_from_call(base_model, x: torch.Tensor, kwargs: dict, c_concat: torch.Tensor | None = None) -> TokenGrid:
    """Token grid of one Wan call from its latent ``x [B, C, T, H, W]``, ``c_concat`` and extra conditioning."""
    dm = base_model.diffusion_model
    patch = tuple(int(p) for p in dm.patch_size)
    hp, wp = -(-x.shape[-2] // patch[1]), -(-x.shape[-1] // patch[2])
    ref_before = hp * wp if kwargs.get("reference_latent") is not None and getattr(dm, "ref_conv", None) is not None else 0
    tdc = kwargs.get("time_dim_concat")
    extra_after = 0 if tdc is None else -(-tdc.shape[2] // patch[0])
    continued = 0
    if is_animate(dm):
        continued = animate_continued_frames_from_concat(c_concat)
        leading = 1 + continued
    elif kwargs.get("vace_context") is not None:   # [B, n_vace, 16 inactive + 16 reactive + 64 mask, T, H, W]
        leading = leading_zero_frames(kwargs["vace_context"][:, 0, 32:])
    else:
        leading = 0
    return TokenGrid.from_latent_shape(tuple(x.shape[-3:]), patch, vae_stride=wan_token_px(base_model) // 2,
                                       ref_tokens_before=ref_before, leading_ref_frames=leading,
                                       extra_frames_after=extra_after, continued_frames=continued)


def grid_from_conditioning(conditioning, base_model) -> TokenGrid | None:
    """The grid the model will sample, from the positive CONDITIONING of a stock Wan node (Fun-Control, VACE,
    Animate, Phantom, I2V); None when it holds no video latent (plain text conditioning)."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        return None
    extra = conditioning[0][1] if len(conditioning[0]) > 1 and isinstance(conditioning[0][1], dict) else {}
    dm = base_model.diffusion_model
    vae_stride = wan_token_px(base_model) // 2
    leading = continued = 0
    if extra.get("vace_frames") is not None:
        video = extra["vace_frames"][0]
        mask = extra.get("vace_mask")
        leading = leading_zero_frames(mask[0]) if mask is not None else 0
    elif extra.get("concat_latent_image") is not None:
        video = extra["concat_latent_image"]
        if is_animate(dm):
            mask = extra.get("concat_mask")
            continued = leading_zero_frames(mask, start=1) if mask is not None else 0
            leading = 1 + continued
    elif extra.get("pose_video_latent") is not None:
        video = extra["pose_video_latent"]
        leading = 1 if is_animate(dm) else 0
        video = video if not leading else torch.zeros(*video.shape[:2], video.shape[2] + 1, *video.shape[3:])
    else:
        return None
    hp, wp = -(-video.shape[-2] // WAN_PATCH[1]), -(-video.shape[-1] // WAN_PATCH[2])
    has_ref = extra.get("reference_latents") is not None and getattr(dm, "ref_conv", None) is not None
    tdc = extra.get("time_dim_concat")
    return TokenGrid.from_latent_shape(tuple(video.shape[-3:]), WAN_PATCH, vae_stride,
                                       ref_tokens_before=hp * wp if has_ref else 0, leading_ref_frames=leading,
                                       extra_frames_after=0 if tdc is None else tdc.shape[2],
                                       continued_frames=continued)


def preview_grid(base_model, pose, conditioning=None, width: int = 0, height: int = 0,
                 length: int = 0) -> tuple[TokenGrid, str, bool]:
    """The grid the node describes and previews, where it came from, and whether it is known (False: a
    guess from the pose): the conditioning of the stock node when it holds the video, else
    ``width x height x length`` (each 0 = the pose's canvas / length)."""
    grid = grid_from_conditioning(conditioning, base_model) if conditioning is not None else None
    if grid is not None:
        return grid, "video from the conditioning", True
    token_px = wan_token_px(base_model)
    w, h = int(width or pose.width), int(height or pose.height)
    n = int(length or len(pose))
    source = ("video size from the node inputs" if width or height or length else
              "video size unknown here (connect the conditioning, or set width/height/length): previewed on the "
              "pose's canvas and length")
    if conditioning is not None:
        source = "the conditioning holds no video latent; " + source
    vae = token_px // 2
    known = bool(width or height or length)
    return TokenGrid.from_latent_shape(((n - 1) // 4 + 1, -(-h // vae), -(-w // vae)), WAN_PATCH, vae), source, known
