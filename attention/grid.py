"""Where each token of a Wan DiT sits in the video: latent frame, token row/column, pixel frames.

Wan patchifies the latent with a (1, 2, 2) Conv3d and flattens frame-major, so a video token has index
``offset + f*Hp*Wp + h*Wp + w``. One token covers ``vae_stride * 2`` pixels on a side (16 for Wan 2.1
and Wan 2.2-14B, 32 for Wan 2.2-TI2V-5B). In time the VAE is causal with stride 4: latent frame 0 is
pixel frame 0, latent frame ``f >= 1`` covers pixel frames ``4f-3 .. 4f``.

Tokens that are not pose-driven video are "global" (see :class:`TokenGrid`):

- ``ref_tokens_before``: tokens prepended before the video (Wan2.2-Fun ``ref_conv``: Hp*Wp tokens);
- ``leading_ref_frames``: latent frames at the start of ``x`` that hold a reference image, not a pose
  frame (Wan-Animate: latent frame 0 is the reference image, the pose video starts at frame 1);
- ``extra_frames_after``: latent frames appended after the video (Phantom ``time_dim_concat``);
- ``continued_frames``: latent frames at the start of the generated video that continue a previous chunk
  (Wan-Animate's ``continue_motion``): given as conditioning, not pose-driven; they are global like the
  reference and counted in ``leading_ref_frames``, and the pose-driven frames after them keep their place
  in the video's time (their pixel frames are those of latent frame ``continued_frames + f``).

The sparse pattern treats every global token as dense both ways: every query attends to them and
they attend to every key, so the model keeps its conditioning path intact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenGrid:
    """Token geometry of one DiT call.

    ``video_frames`` counts only the pose-driven latent frames (after ``leading_ref_frames``, before
    ``extra_frames_after``); ``continued_frames`` of the leading frames are continue-motion frames of the
    generated video itself (the rest of them are reference frames). ``pixel_height``/``pixel_width`` are the video's pixel size (latent size x
    VAE stride); the token grid may cover a few more pixels when the latent was padded to the patch.
    """

    video_frames: int
    hp: int
    wp: int
    token_px: int = 16
    pixel_height: int = 0          # 0: hp * token_px
    pixel_width: int = 0           # 0: wp * token_px
    ref_tokens_before: int = 0
    leading_ref_frames: int = 0
    extra_frames_after: int = 0
    temporal_stride: int = 4
    continued_frames: int = 0

    def __post_init__(self):
        for name in ("video_frames", "hp", "wp", "token_px", "temporal_stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TokenGrid.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("pixel_height", "pixel_width", "ref_tokens_before", "leading_ref_frames", "extra_frames_after",
                     "continued_frames"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"TokenGrid.{name} must be >= 0, got {getattr(self, name)}")
        if self.continued_frames > self.leading_ref_frames:
            raise ValueError(f"TokenGrid: continued_frames={self.continued_frames} must be counted in "
                             f"leading_ref_frames={self.leading_ref_frames}")
        if self.pixel_height == 0:
            object.__setattr__(self, "pixel_height", self.hp * self.token_px)
        if self.pixel_width == 0:
            object.__setattr__(self, "pixel_width", self.wp * self.token_px)
        if self.pixel_height > self.hp * self.token_px or self.pixel_width > self.wp * self.token_px:
            raise ValueError(
                f"TokenGrid: pixel size {self.pixel_width}x{self.pixel_height} exceeds the token grid "
                f"{self.wp}x{self.hp} tokens of {self.token_px} px; pass the latent size, not the padded one")

    @classmethod
    def from_latent_shape(
        cls,
        latent_thw: tuple[int, int, int],
        patch_size: tuple[int, int, int] = (1, 2, 2),
        vae_stride: int = 8,
        temporal_stride: int = 4,
        ref_tokens_before: int = 0,
        leading_ref_frames: int = 0,
        extra_frames_after: int = 0,
        continued_frames: int = 0,
    ) -> "TokenGrid":
        """Grid of the latent ``x`` that the DiT receives (``x.shape[-3:]``, ``leading_ref_frames`` included).

        ``vae_stride`` is 8 for Wan 2.1 / 2.2-14B and 16 for Wan 2.2-TI2V-5B. Spatial sizes need not be
        divisible by the patch: Wan pads up, so the grid is rounded up.
        """
        t, h, w = (int(v) for v in latent_thw)
        pt, ph, pw = (int(v) for v in patch_size)
        if pt != 1:
            raise ValueError(f"patch_size: temporal patch {pt} is not supported (Wan uses 1); got {patch_size}")
        if t - leading_ref_frames < 1:
            raise ValueError(
                f"latent_thw: {t} latent frames leave no video frame after leading_ref_frames={leading_ref_frames}")
        return cls(
            video_frames=t - leading_ref_frames,
            hp=-(-h // ph),
            wp=-(-w // pw),
            token_px=vae_stride * ph,
            pixel_height=h * vae_stride,
            pixel_width=w * vae_stride,
            ref_tokens_before=ref_tokens_before,
            leading_ref_frames=leading_ref_frames,
            extra_frames_after=extra_frames_after,
            temporal_stride=temporal_stride,
            continued_frames=continued_frames,
        )

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        return self.hp * self.wp

    @property
    def video_token_offset(self) -> int:
        """Index of the first pose-driven video token."""
        return self.ref_tokens_before + self.leading_ref_frames * self.tokens_per_frame

    @property
    def video_tokens(self) -> int:
        return self.video_frames * self.tokens_per_frame

    @property
    def patch_grid(self) -> tuple[int, int, int]:
        """(frames, Hp, Wp) of the patchified latent, as newer ComfyUI reports it in ``grid_sizes``
        (reference and appended frames included, ``ref_tokens_before`` not)."""
        return (self.leading_ref_frames + self.video_frames + self.extra_frames_after, self.hp, self.wp)

    @property
    def seq_len(self) -> int:
        """Total self-attention length L of the call, global tokens included."""
        return self.ref_tokens_before + self.patch_grid[0] * self.tokens_per_frame

    @property
    def global_tokens(self) -> int:
        return self.seq_len - self.video_tokens

    @property
    def pixel_frames(self) -> int:
        """Pixel frames of the generated video: ``(continued_frames + video_frames - 1) * 4 + 1``."""
        return (self.continued_frames + self.video_frames - 1) * self.temporal_stride + 1

    # ---- mappings ----------------------------------------------------------------------------
    def latent_frame_of_pixel(self, pixel_frames: np.ndarray | int) -> np.ndarray:
        """Video latent frame holding each pixel frame: ``ceil(t / 4) - continued_frames``."""
        t = np.asarray(pixel_frames)
        return (t + self.temporal_stride - 1) // self.temporal_stride - self.continued_frames

    def pixel_frames_of_latent(self, f: int) -> range:
        """Pixel frames covered by video latent frame ``f`` (latent frame g = f + continued_frames of the
        generated video: 0 -> [0], g -> 4g-3 .. 4g)."""
        g = f + self.continued_frames
        if g == 0:
            return range(0, 1)
        s = self.temporal_stride
        return range(s * g - s + 1, s * g + 1)

    def video_token_indices(self) -> np.ndarray:
        """int64 [video_frames, hp, wp]: sequence index of every video token."""
        idx = np.arange(self.video_tokens, dtype=np.int64) + self.video_token_offset
        return idx.reshape(self.video_frames, self.hp, self.wp)

    def global_token_indices(self) -> np.ndarray:
        """int64 [global_tokens]: sequence indices of the global (reference / extra) tokens, ascending."""
        head = np.arange(self.video_token_offset, dtype=np.int64)
        tail = np.arange(self.video_token_offset + self.video_tokens, self.seq_len, dtype=np.int64)
        return np.concatenate([head, tail])

    def token_frames(self) -> np.ndarray:
        """int64 [seq_len]: video latent frame of each token (0-based among video frames), -1 for global tokens."""
        out = np.full(self.seq_len, -1, dtype=np.int64)
        out[self.video_token_offset : self.video_token_offset + self.video_tokens] = np.repeat(
            np.arange(self.video_frames), self.tokens_per_frame)
        return out

    def describe(self) -> str:
        extra = []
        if self.ref_tokens_before:
            extra.append(f"{self.ref_tokens_before} ref tokens before")
        if self.leading_ref_frames - self.continued_frames:
            extra.append(f"{self.leading_ref_frames - self.continued_frames} leading ref frame(s)")
        if self.continued_frames:
            extra.append(f"{self.continued_frames} continue-motion frame(s)")
        if self.extra_frames_after:
            extra.append(f"{self.extra_frames_after} extra frame(s) after")
        tail = f" + {', '.join(extra)}" if extra else ""
        return (f"{self.video_frames} latent frames x {self.hp}x{self.wp} tokens of {self.token_px}px "
                f"({self.pixel_frames} px frames, {self.pixel_width}x{self.pixel_height}){tail}, L={self.seq_len}")
