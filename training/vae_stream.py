"""Train the IASA-mini VAE where long videos live: past the warm-up of its causal caches.

ComfyUI's Wan VAE runs causally, chunk by chunk, carrying each causal conv's last frames in a cache; its first
frame is encoded on its own, like an image (a key frame). The encoder's output depends on ~115 frames before it,
the decoder's on ~150. A VAE trained on windows shorter than that only ever meets the warm-up regime, in which the
key frame is in reach, and it learns to lean on it: decoding a clip whose key latent is zeroed costs ~5 dB 60
frames later (docs/training/session_2026_12_06b). Past ~150 frames of one pass (what VAEDecode does with a long
video) no key frame is in reach and the decode falls apart; a decoder-only stage on 289-frame windows did not fix
it, because the frozen encoder's latents there do not carry their frames on their own.

:func:`warm_autoencode` trains that regime at the cost of a short window: the first ``warm`` latent frames of a
window go through the stock chunked methods without gradients, only to fill the caches (encoder and decoder);
the rest of the window goes through them as one chunk with gradients. Its output equals the stock
``decode(encode(x))`` on the frames after the warm part (``tests/unit/test_vae_stream.py``).
"""
from __future__ import annotations

import random

import torch

from .vae_parallel import decode_parallel, encoder_features_parallel


def warm_start_frame(warm: int) -> int:
    """First frame of a window that the latent frames after the first ``warm`` ones decode to (latent 0 is
    frame 0, latent ``j >= 1`` frames ``4j-3 .. 4j``)."""
    return 0 if warm <= 0 else 1 + 4 * (warm - 1)


def warm_autoencode(vae, x: torch.Tensor, warm: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(reconstruction, mu, logvar)`` of the frames ``x[:, :, warm_start_frame(warm):]`` of a window of
    ``1 + 4k`` frames, as the stock chunked ``decode(encode(x))`` gives them, with gradients only through the
    latents after the first ``warm`` (``warm=0``: the whole window, through training/vae_parallel.py)."""
    frames = x.shape[2]
    if (frames - 1) % 4:
        raise ValueError(f"warm_autoencode: a window of 1 + 4k frames is needed, got {frames}")
    latents = 1 + (frames - 1) // 4
    if not 0 <= warm < latents:
        raise ValueError(f"warm_autoencode: warm={warm} must leave at least one of the window's {latents} latent frames")
    if warm == 0:
        mu, logvar = _moments(vae, encoder_features_parallel(vae, x))
        return decode_parallel(vae, mu), mu, logvar
    from comfy.ldm.wan.vae import count_conv3d   # the cache size the stock encode/decode use

    enc_cache = [None] * count_conv3d(vae.encoder)
    dec_cache = [None] * count_conv3d(vae.decoder)
    first = warm_start_frame(warm)
    with torch.no_grad():   # the stock first chunk (the key frame), then the rest of the warm part as one chunk
        for piece in ([x[:, :, :1]] + ([x[:, :, 1:first]] if warm > 1 else [])):
            mu_warm, _ = _moments(vae, vae.encoder(piece, feat_cache=enc_cache, feat_idx=[0]))
            vae.decoder(vae.conv2(mu_warm), feat_cache=dec_cache, feat_idx=[0])
    mu, logvar = _moments(vae, vae.encoder(x[:, :, first:], feat_cache=enc_cache, feat_idx=[0]))
    return vae.decoder(vae.conv2(mu), feat_cache=dec_cache, feat_idx=[0]), mu, logvar


def _moments(vae, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) from the encoder's output, through ``vae.conv1`` as the stock ``encode`` runs it."""
    mu, logvar = vae.conv1(h).chunk(2, dim=1)
    return mu, logvar


class WarmSchedule:
    """How many warm latent frames each training step uses: 0 (a window from its clip's start, as short videos
    and every video's first frames are decoded) with probability ``p_zero``, else uniform in ``1..max_warm``.
    Drawn from the step number, so a resumed run and every rank draw the same."""

    def __init__(self, max_warm: int, p_zero: float = 0.25, seed: int = 0):
        if max_warm < 0 or not 0.0 <= p_zero <= 1.0:
            raise ValueError(f"WarmSchedule: max_warm={max_warm} must be >= 0 and p_zero={p_zero} in 0..1")
        self.max_warm, self.p_zero, self.seed = int(max_warm), float(p_zero), int(seed)

    def __call__(self, step: int) -> int:
        if self.max_warm == 0:
            return 0
        rng = random.Random(self.seed * 1_000_003 + step)
        return 0 if rng.random() < self.p_zero else rng.randint(1, self.max_warm)

    def window(self, train_frames: int) -> int:
        """Frames the longest drawn window needs: the warm part plus ``train_frames`` (1 + 4k) trained frames."""
        return train_frames + 4 * self.max_warm


class WarmWindows:
    """Training windows for a :class:`WarmSchedule`: each step's window is just long enough for the warm part it
    drew (``train_frames + 4 * warm``), drawn uniformly over the bank's windows of that length, so a clip too short
    for the longest warm-up still serves the short ones (and every step with ``warm = 0``)."""

    def __init__(self, bank, train_frames: int, schedule: WarmSchedule):
        self.bank, self.train_frames, self.schedule = bank, int(train_frames), schedule
        self._by_warm: dict = {}

    def bank_for(self, warm: int):
        if warm not in self._by_warm:
            self._by_warm[warm] = self.bank.with_window(self.train_frames + 4 * warm)
        return self._by_warm[warm]

    def sample(self, step: int, batch: int, crop, gen: torch.Generator, flip: bool = False) -> tuple[torch.Tensor, int]:
        """``(windows [B, 3, train_frames + 4 * warm, h, w], warm)`` for this step."""
        warm = self.schedule(step)
        return self.bank_for(warm).sample(batch, crop, gen, flip=flip), warm

    def sample_with_regions(self, step: int, batch: int, crop, gen: torch.Generator,
                            flip: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """:meth:`sample` plus the windows' region masks ``[B, 1, T, h, w]`` (FrameBank.sample_with_regions)."""
        warm = self.schedule(step)
        x, m = self.bank_for(warm).sample_with_regions(batch, crop, gen, flip=flip)
        return x, m, warm
