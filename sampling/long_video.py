"""Long video: run a video model over overlapping temporal windows of its trained length, fused per frame.

The paper generates long clips segment by segment with MimicMotion's *progressive latent fusion*: at
every denoising step the model runs on overlapping windows of the trained length and the per-window
predictions are blended by temporal index, so neighbouring windows agree on their shared frames. Here
that is an ``APPLY_MODEL`` wrapper (a model patch), so it works under every sampler:

- ``x [B, C, T, H, W]`` with ``T`` <= the window runs unchanged (one call, nothing sliced);
- otherwise :func:`plan_windows` covers all latent frames with windows of the trained length (stride
  ``window - overlap``, the last window aligned to the end), each window calls the rest of the chain
  with ``x`` and every per-frame condition sliced to its frames, and :func:`fuse_windows` blends the
  outputs with weights normalised per frame (:func:`window_weights`: linear ramps over the overlaps
  by default, never zero where only one window covers a frame);
- per-frame conditions (:func:`slice_conditions`): ``c_concat`` (Fun-Control's control/reference
  concat, I2V's image concat) and every 5-D keyword tensor whose time axis equals ``x``'s (Wan 2.2's
  ``denoise_mask``, ...), VACE's 6-D ``vace_context``, Animate's ``pose_latents`` (one frame fewer than
  ``x``: the reference frame has none) and ``face_pixel_values`` (pixel frames). Reference inputs are
  never sliced: every window gets the same ``reference_latent`` (ref_conv tokens), ``time_dim_concat``
  (Phantom), ``clip_fea``; Animate's reference frame (latent frame 0) is part of every window;
- inner code learns the window from ``transformer_options["context_window"]`` (a
  :class:`LongVideoWindow`: ``index_list`` = the window's latent video frames, ``total_frames``), the
  same key ComfyUI's own context windows set; IASA Sparse Attention slices its pose layout with it.

What the wrapped ``BaseModel.apply_model`` returns is the *denoised* prediction ``x0(x, sigma)``
(``model_sampling.calculate_denoised``). For a flow model (Wan, ``CONST``) ``x0 = x - sigma * v``, per
frame; a convex per-frame blend of window predictions of ``x0`` is the same blend of their ``v`` (the
``x`` term carries weight 1), and for eps models likewise of ``eps``: fusing in the returned space is
exact and linear in the window outputs, whatever the sampler does with it.

This module imports no ComfyUI; :func:`apply_long_video` imports it lazily.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

KEY = "iasa"                      # the pack's one key (attention.patch.KEY) for wrappers and attachments
TEMPORAL_STRIDE = 4               # Wan / Hunyuan video VAEs: latent frame f >= 1 covers pixel frames 4f-3..4f
FUSE_MODES = ("ramp", "triangle", "flat")
KEEP_WHOLE = frozenset({"reference_latent", "time_dim_concat", "clip_fea", "reference_motion"})
SIX_D_TIME_DIM = {"vace_context": 3}   # [B, n_vace, C, T, H, W]
PIXEL_FRAME_KEYS = frozenset({"face_pixel_values"})  # Animate: [B, 3, T_px, 512, 512]


# ------------------------------------------------------------------------------------------ inputs
def latent_frames(pixel_frames: int, input_name: str = "window_frames") -> int:
    """Latent frames of a clip of ``pixel_frames`` (must be ``1 + 4k``): ``(n - 1) // 4 + 1``."""
    n = int(pixel_frames)
    if n < 1 or (n - 1) % TEMPORAL_STRIDE:
        lower = max(1, (n - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1)
        raise ValueError(f"{input_name}: {n} pixel frames is not 1 + 4k (the Wan VAE codes frame 0, then 4 frames "
                         f"per latent frame); use {lower} or {lower + TEMPORAL_STRIDE}")
    return (n - 1) // TEMPORAL_STRIDE + 1


@dataclass(frozen=True)
class LongVideoConfig:
    """Window and overlap in latent frames, and the fuse mode."""

    window: int
    overlap: int
    fuse: str = "ramp"

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window: must be >= 1 latent frame, got {self.window}")
        if not 0 <= self.overlap < self.window:
            raise ValueError(f"overlap: {self.overlap} latent frames must be >= 0 and smaller than the window "
                             f"({self.window}); lower the overlap")
        if self.fuse not in FUSE_MODES:
            raise ValueError(f"fuse: unknown mode {self.fuse!r}; choose from {list(FUSE_MODES)}")

    @classmethod
    def from_pixel_frames(cls, window_frames: int, overlap_frames: int, fuse: str = "ramp") -> "LongVideoConfig":
        """From the node's inputs: window ``1 + 4k`` pixel frames, overlap in pixel frames (rounded up to whole
        latent frames of 4 pixel frames)."""
        window = latent_frames(window_frames, "window_frames")
        o = int(overlap_frames)
        if o < 0:
            raise ValueError(f"overlap_frames: must be >= 0, got {o}")
        if o >= int(window_frames):
            raise ValueError(f"overlap_frames: {o} must be smaller than window_frames ({window_frames}); "
                             f"use at most {max(0, (window - 1) * TEMPORAL_STRIDE)}")
        return cls(window, -(-o // TEMPORAL_STRIDE), fuse)  # o <= 4 (window - 1): less than the window


# ---------------------------------------------------------------------------------------- planning
def plan_windows(total: int, window: int, overlap: int) -> list[range]:
    """Contiguous windows of ``window`` latent frames covering ``0..total-1``: stride ``window - overlap``,
    the last window aligned to the end (it overlaps its neighbour by at least ``overlap``). One window
    of all frames when ``total <= window``."""
    total, window, overlap = int(total), int(window), int(overlap)
    if total < 1:
        raise ValueError(f"total: need at least 1 latent frame, got {total}")
    LongVideoConfig(window, overlap)  # validates
    if total <= window:
        return [range(total)]
    stride = window - overlap
    starts = list(range(0, total - window, stride))
    starts.append(total - window)
    return [range(s, s + window) for s in starts]


def _raw_weights(windows: list[range], mode: str) -> list[torch.Tensor]:
    out = []
    for k, w in enumerate(windows):
        n = len(w)
        j = torch.arange(n, dtype=torch.float64)
        if mode == "flat":
            out.append(torch.ones(n, dtype=torch.float64))
        elif mode == "triangle":  # MimicMotion's tile weights: peak mid-window, 1/n at the ends
            t = (j + 0.5) * 2.0 / n
            out.append(torch.minimum(t, 2.0 - t))
        else:  # ramp: 1 inside, linear over the overlap with each neighbour, never 0
            r = torch.ones(n, dtype=torch.float64)
            left = max(0, windows[k - 1].stop - w.start) if k > 0 else 0
            right = max(0, w.stop - windows[k + 1].start) if k + 1 < len(windows) else 0
            if left:
                r = torch.minimum(r, (j + 1) / (left + 1))
            if right:
                r = torch.minimum(r, (n - j) / (right + 1))
            out.append(r)
    return out


def window_weights(windows: list[range], total: int, mode: str = "ramp") -> list[torch.Tensor]:
    """float64 weight per frame of each window, normalised so that every frame's weights sum to 1."""
    if mode not in FUSE_MODES:
        raise ValueError(f"fuse: unknown mode {mode!r}; choose from {list(FUSE_MODES)}")
    raw = _raw_weights(windows, mode)
    acc = torch.zeros(int(total), dtype=torch.float64)
    for w, r in zip(windows, raw):
        acc[w.start:w.stop] += r
    if (acc <= 0).any():
        missing = torch.nonzero(acc <= 0).flatten().tolist()
        raise ValueError(f"windows leave latent frames {missing[:8]} of {total} uncovered")
    return [r / acc[w.start:w.stop] for w, r in zip(windows, raw)]


@dataclass(frozen=True)
class WindowPlan:
    """Windows over ``total`` latent video frames and their normalised per-frame weights."""

    total: int
    windows: tuple[range, ...]
    weights: tuple[torch.Tensor, ...]

    @classmethod
    def build(cls, total: int, config: LongVideoConfig) -> "WindowPlan":
        windows = plan_windows(total, config.window, config.overlap)
        return cls(int(total), tuple(windows), tuple(window_weights(windows, total, config.fuse)))

    def __len__(self) -> int:
        return len(self.windows)

    def describe(self) -> str:
        spans = ", ".join(f"{w.start}-{w.stop - 1}" for w in self.windows)
        return f"{len(self.windows)} windows over {self.total} latent frames ({spans})"


@dataclass(frozen=True)
class LongVideoWindow:
    """What inner code sees in ``transformer_options["context_window"]`` during one window's call.

    ``index_list``: the window's latent *video* frames (a leading reference frame, as in Animate, is
    not counted); ``total_frames``: latent video frames of the whole clip. Duck-types ComfyUI's
    ``IndexListContextWindow`` (``index_list``, ``context_length``, ``dim``)."""

    index_list: tuple[int, ...]
    total_frames: int
    window_index: int
    window_count: int
    leading_frames: int = 0
    dim: int = 2
    pixel_start: int | None = None   # keyed windows: the window is a clip of its own from this video pixel frame

    @property
    def context_length(self) -> int:
        return len(self.index_list)


# ----------------------------------------------------------------------------------------- slicing
def _take(t: torch.Tensor, dim: int, index: list[int] | range) -> torch.Tensor:
    if isinstance(index, range) and index.step == 1:
        return t.narrow(dim, index.start, len(index))
    return t.index_select(dim, torch.as_tensor(list(index), dtype=torch.long, device=t.device))


def x_frames(frames: range, leading: int) -> range | list[int]:
    """Frames of ``x`` a window takes: the leading reference frames, then its video frames (a range when
    there are no leading frames, so that slicing is a view)."""
    if leading == 0:
        return frames
    return list(range(leading)) + [leading + f for f in frames]


def pixel_frames(frames: range) -> range:
    """Pixel frames that condition video latent frames ``frames`` as a clip of its own: ``4a .. 4b``.

    A clip's latent frame 0 is its pixel frame 0 and latent j >= 1 ends at pixel 4j; starting at pixel 4a
    keeps that alignment for a window starting at latent frame a (4a is the last pixel frame of a)."""
    return range(TEMPORAL_STRIDE * frames.start, TEMPORAL_STRIDE * (frames.stop - 1) + 1)


def slice_conditions(c_concat: torch.Tensor | None, kwargs: dict, frames: range, x_t: int, leading: int = 0
                     ) -> tuple[torch.Tensor | None, dict, list[str], list[str]]:
    """``c_concat`` and the keyword conditions of one window.

    ``frames``: the window's latent video frames; ``x_t``: frames of the whole ``x`` (``leading``
    reference frames included). Returns ``(c_concat, kwargs, sliced names, 5-D+ names left whole)``."""
    video_t = x_t - leading
    xi = x_frames(frames, leading)
    sliced, whole = [], []
    if isinstance(c_concat, torch.Tensor) and c_concat.ndim == 5 and c_concat.shape[2] == x_t:
        c_concat = _take(c_concat, 2, xi)
        sliced.append("c_concat")
    elif isinstance(c_concat, torch.Tensor):
        whole.append("c_concat")
    out = {}
    n_px = (video_t - 1) * TEMPORAL_STRIDE + 1
    for name, value in kwargs.items():
        if not isinstance(value, torch.Tensor) or name in KEEP_WHOLE or value.ndim < 5:
            out[name] = value
            if isinstance(value, torch.Tensor) and value.ndim >= 5:
                whole.append(name)
            continue
        dim = SIX_D_TIME_DIM.get(name, 2) if value.ndim == 6 else 2
        size = value.shape[dim] if value.ndim in (5, 6) else -1
        if name in PIXEL_FRAME_KEYS and value.ndim == 5 and size == n_px:
            out[name] = _take(value, 2, pixel_frames(frames))
        elif size == x_t and (value.ndim == 5 or name in SIX_D_TIME_DIM):
            out[name] = _take(value, dim, xi)
        elif leading and value.ndim == 5 and size == video_t:   # Animate's pose_latents: no reference frame
            out[name] = _take(value, 2, frames)
        else:
            out[name] = value
            whole.append(name)
            continue
        sliced.append(name)
    return c_concat, out, sliced, whole


def fuse_windows(outputs: list[torch.Tensor], plan: WindowPlan, leading: int = 0) -> torch.Tensor:
    """Blend window outputs ``[B, C, leading + n, H, W]`` into ``[B, C, leading + total, H, W]``.

    Video frames get the plan's weights; leading reference frames the mean over windows."""
    first = outputs[0]
    shape = list(first.shape)
    shape[2] = leading + plan.total
    out = torch.zeros(shape, dtype=first.dtype, device=first.device)
    for y, frames, w in zip(outputs, plan.windows, plan.weights):
        accumulate_window(out, y, frames, w, leading, len(plan))
    return out


def accumulate_window(out: torch.Tensor, y: torch.Tensor, frames: range, weights: torch.Tensor, leading: int,
                      window_count: int) -> None:
    """``out += weights * y`` on the window's frames (in place)."""
    w = torch.cat([torch.full((leading,), 1.0 / window_count, dtype=torch.float64), weights])
    w = w.to(dtype=y.dtype).to(y.device).view(1, 1, -1, *([1] * (y.ndim - 3)))  # cast on the CPU (MPS: no f64)
    index = torch.as_tensor(list(x_frames(frames, leading)), dtype=torch.long, device=y.device)
    out.index_add_(2, index, y * w)


# ------------------------------------------------------------------------------------------- patch
def leading_reference_frames(base_model) -> int:
    """Latent frames before the video in ``x`` that every window keeps: 1 for Wan-Animate (its reference
    image is latent frame 0, ``WanAnimateToVideo``'s trim_latent), else 0."""
    dm = getattr(base_model, "diffusion_model", None)
    return 1 if "Animate" in type(dm).__name__ else 0


class LongVideoPatch:
    """The window wrapper of one IASA Long Video node (or, with ``keyed``, of IASA Keyed Windows: the latent holds
    the windows one after another, each a clip of its own, and nothing is fused); shared (not copied) by every
    model clone."""

    def __init__(self, config: LongVideoConfig, keyed=None):
        self.config = config
        self.keyed = keyed                # a keyed_windows.KeyedWindowPlan, or None
        self._keyed_plan = None if keyed is None else WindowPlan(   # consecutive blocks, weight 1: concatenation
            keyed.latent_total, tuple(keyed.latent_windows()),
            tuple(torch.ones(keyed.window_latents, dtype=torch.float64) for _ in range(len(keyed))))
        self.stats: Counter = Counter()
        self.between_windows = None       # called before every window (ComfyUI: the interrupt check)
        self._plans: dict[int, WindowPlan] = {}
        self._logged: set = set()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options: share, don't copy
        return self

    def plan(self, total: int) -> WindowPlan:
        with self._lock:
            if total not in self._plans:
                self._plans[total] = WindowPlan.build(total, self.config)
                log.info("IASA long video: %s (window %d, overlap %d latent frames, %s fuse)",
                         self._plans[total].describe(), self.config.window, self.config.overlap, self.config.fuse)
            return self._plans[total]

    def keyed_plan(self, total: int, leading: int) -> WindowPlan:
        """The keyed windows' ``WindowPlan``, after checking the call fits it."""
        if leading:
            raise ValueError("IASA Keyed Windows: this model keeps a reference frame in front of the video (Animate); "
                             "keyed windows are for Fun-Control-style models, use IASA Long Video instead")
        if total != self.keyed.latent_total:
            raise ValueError(f"IASA Keyed Windows: the sampled latent has {total} frames but the node planned "
                             f"{self.keyed.describe()} = {self.keyed.latent_total} latent frames; connect its latent "
                             "output to the sampler")
        return self._keyed_plan

    def apply_model_wrapper(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        self.stats["calls"] += 1
        leading = leading_reference_frames(getattr(executor, "class_obj", None))
        total = x.shape[2] - leading if x.ndim == 5 else 0
        if self.keyed is None and (x.ndim != 5 or total <= self.config.window):
            self.stats["whole_calls"] += 1
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        plan = self.keyed_plan(total, leading) if self.keyed is not None else self.plan(total)
        starts = self.keyed.starts if self.keyed is not None else None
        self.stats["windowed_calls"] += 1
        if control is not None:
            self._log_once("control", logging.WARNING, "IASA long video: a ControlNet-style `control` input is "
                           "passed to every window unsliced")
        out = None
        for i, (frames, weights) in enumerate(zip(plan.windows, plan.weights)):
            if self.between_windows is not None:
                self.between_windows()
            sub_concat, sub_kwargs, sliced, whole = slice_conditions(c_concat, kwargs, frames, x.shape[2], leading)
            self._log_once(("slice", tuple(sliced), tuple(whole)), logging.DEBUG,
                           "IASA long video: per window sliced %s; left whole %s", sliced or "nothing",
                           whole or "nothing")
            window = LongVideoWindow(tuple(frames), total, i, len(plan), leading,
                                     pixel_start=None if starts is None else starts[i])
            to = {**transformer_options, "context_window": window}
            sub_x = _take(x, 2, x_frames(frames, leading))
            y = executor(sub_x, t, sub_concat, c_crossattn, control, to, **sub_kwargs)
            if out is None:
                shape = list(y.shape)
                shape[2] = x.shape[2]
                out = torch.zeros(shape, dtype=y.dtype, device=y.device)
            accumulate_window(out, y, frames, weights, leading, len(plan))
            self.stats["window_calls"] += 1
        return out

    def prepare_sampling_wrapper(self, executor, model, noise_shape, *args, **kwargs):
        """Memory estimate for one window, not the whole clip (as ComfyUI's context windows do)."""
        shape = list(noise_shape)
        if len(shape) == 5:
            shape[2] = min(shape[2], self.config.window + leading_reference_frames(getattr(model, "model", None)))
        return executor(model, shape, *args, **kwargs)

    def _log_once(self, key, level, msg, *args):
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.log(level, msg, *args)


def is_long_video_wrapper(fn) -> bool:
    return isinstance(getattr(fn, "__self__", None), LongVideoPatch)


def put_first(wrappers: dict, wrapper_type: str, fn) -> None:
    """Make ``fn`` the outermost wrapper of ``wrapper_type`` in a ModelPatcher's ``wrappers`` dict
    (``{type: {key: [fn, ...]}}``; ComfyUI runs them in dict order, then list order, first = outermost):
    earlier long-video wrappers are dropped, ``KEY`` moves to the front and ``fn`` to the front of it."""
    by_key = wrappers.setdefault(wrapper_type, {})
    mine = [w for w in by_key.get(KEY, []) if not is_long_video_wrapper(w)]
    rest = {k: v for k, v in by_key.items() if k != KEY}
    by_key.clear()
    by_key[KEY] = [fn, *mine]
    by_key.update(rest)


def apply_long_video(model_patcher, patch: LongVideoPatch):
    """Clone ``model_patcher`` and make ``patch`` its outermost ``APPLY_MODEL`` wrapper.

    Outermost whatever the node order: wrappers applied before (IASA Sparse Attention under the same
    key, other packs' keys) and after (appended) all run inside each window, as they would under
    ComfyUI's own context windows, so they see window-sized calls."""
    import comfy.model_management
    import comfy.patcher_extension

    m = model_patcher.clone()
    patch.between_windows = comfy.model_management.throw_exception_if_processing_interrupted
    wt = comfy.patcher_extension.WrappersMP
    put_first(m.wrappers, wt.APPLY_MODEL, patch.apply_model_wrapper)
    put_first(m.wrappers, wt.PREPARE_SAMPLING, patch.prepare_sampling_wrapper)
    return m
