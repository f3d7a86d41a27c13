"""The input-aware sparse attention as a ComfyUI model patch (Wan family).

``apply_sparse_attention(model_patcher, patch)`` clones the model and registers, all under one key:

- an ``APPLY_MODEL`` wrapper that learns the token grid and its extra tokens from the latent ``x`` at
  call time (``wan_grid.grid_from_call``: VACE's and Animate's reference frames, Animate's continue-motion
  frames, ref_conv tokens, Phantom frames; context windows) and the step index from the sigmas; the pose
  is placed on that video with the stock node's length and centre-crop rules (``alignment``);
- an object patch on every block's ``self_attn.forward`` (VACE blocks too) that marks its attention
  calls as self-attention and gives their layer (:class:`SelfAttentionCallSite`; newer ComfyUI's native
  ``block_index`` wins when present). Self- and cross-attention are told apart by this call site, never
  by sequence length; an object patch set before is wrapped, not replaced;
- ``optimized_attention_override``: self-attention of the video tokens goes to the block-sparse kernel;
  cross-attention and dense layers/steps go to the previous override if one was set (another pack's
  patch) or to ComfyUI's own backend;
- ``ON_PRE_RUN`` / ``ON_CLEANUP`` callbacks that delimit a sampling run.

Never silently dense: a video self-attention call that cannot go sparse (no grid, a mask, an
unexpected length, a ``grid_sizes`` that disagrees with the latent, no layout from the pose; see
:data:`FALLBACK_HELP`) runs dense with a warning logged once per run naming the reason, or raises
:class:`DenseFallbackError` when the node's ``strict`` is on; each run ends with a summary of its calls.

The layout is built once per grid (once per sampling run in practice) and shared by cond and uncond,
every layer and every step.

torch.compile (stock TorchCompileModel compiles the whole diffusion model): the APPLY_MODEL wrapper runs
outside the compiled module, so all host work happens there: it builds the layout (numpy), prepares the
kernel (``kernels.prepare_kernel``: validation, index tables, masks) and fixes the per-call routing facts
in a :class:`CallState`. Inside the compiled blocks an attention call only reads those and appends its
route to ``CallState.notes`` (dynamo replays that as a side effect); the wrapper counts and logs the notes
after the call. So the sparse path traces without a graph break and compiles once per resolution. Under IASA Long Video (``sampling/long_video.py``, which makes itself the
outer wrapper in either node order) every window's call carries ``context_window.index_list`` and
``total_frames``: one layout per window, from the pose fitted to the whole clip. This module imports ComfyUI only inside :func:`apply_sparse_attention`.
"""
from __future__ import annotations

import logging
import dataclasses
import threading
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..errors import public_name
from ..pose.keypoints import PoseSequence
from .alignment import VideoAlignment
from .grid import TokenGrid
from .gather import ensure_recompile_limit, recompile_limit_for
from .kernels import QuerySpec, SparseKernel, prepare_kernel
from .pose_layout import PoseLayout, SparseAttentionConfig, build_pose_layout
from .token_order import GROUPED_KEY, SlotOrder, install_grouping, plan_slot_order
from .wan_grid import grid_from_call

log = logging.getLogger(__name__)

KEY = "iasa"
CALL_KEY = "iasa_call"
SELF_ATTN_KEY = "iasa_self_attention"   # set by SelfAttentionCallSite: the layer of this self-attention call


@dataclass
class CallState:
    """What the APPLY_MODEL wrapper prepared for one model call (outside any compiled region), and what its
    attention calls did: ``notes`` of (route, fallback detail), applied by the wrapper after the call."""

    plan: PoseLayout
    kernel: SparseKernel | None          # prepared for the model's q (None: prepared at the first call)
    dense_step: bool                     # this step is one of the first ``dense_steps``
    notes: list = field(default_factory=list)
    sites_seen: bool = False             # a marked self-attention call ran in this model call
    slot_order: SlotOrder | None = None  # the model runs its tokens grouped in this order (token_order)


@dataclass(frozen=True)
class CallInfo:
    """What the APPLY_MODEL wrapper learnt about one model call."""

    grid: TokenGrid
    step: int | None
    latent_frames: tuple[int, ...] | None = None   # context window: its latent video frames ...
    total_frames: int | None = None                # ... out of this many (None: the window's last + 1)
    pixel_start: int | None = None                 # keyed window: a clip of its own from this video pixel frame
    state: CallState | None = field(default=None, compare=False)   # None: a call not made by the wrapper


def step_index(transformer_options: dict) -> int | None:
    """Index of the current sigma in the run's schedule (``sample_sigmas``), None when unknown."""
    sigmas, schedule = transformer_options.get("sigmas"), transformer_options.get("sample_sigmas")
    if sigmas is None or schedule is None or len(schedule) == 0:
        return None
    current = float(sigmas.flatten()[0])
    return int(torch.argmin((schedule.float().cpu() - current).abs()).item())


class SelfAttentionCallSite:
    """Object patch of ``blocks.<i>.self_attn.forward`` (and VACE's ``vace_blocks.<j>``): calls the forward it
    replaces with ``transformer_options[SELF_ATTN_KEY] = layer``, so that the attention override knows the
    call comes from a self-attention module (never guessed from sequence lengths) and from which layer."""

    def __init__(self, forward, layer: int):
        self.forward = forward
        self.layer = int(layer)

    def __call__(self, x, freqs, transformer_options={}, **kwargs):  # noqa: B006 (WanSelfAttention's signature)
        return self.forward(x, freqs, transformer_options={**transformer_options, SELF_ATTN_KEY: self.layer}, **kwargs)


def self_attention_sites(dm) -> list[tuple[str, int]]:
    """(attribute path under ``diffusion_model``, layer) of every self-attention forward of a Wan DiT.

    VACE blocks run right after the main block they are attached to; they take that block's layer."""
    sites = [(f"blocks.{i}.self_attn.forward", i) for i in range(len(dm.blocks))]
    layer_of_vace = {n: i for i, n in getattr(dm, "vace_layers_mapping", {}).items()}
    for n in range(len(getattr(dm, "vace_blocks", ()))):
        sites.append((f"vace_blocks.{n}.self_attn.forward", layer_of_vace.get(n, n)))
    return sites


@public_name
class DenseFallbackError(RuntimeError):
    """IASA Sparse Attention with ``strict`` on met a call it cannot run sparsely."""


# Why a self-attention call of the video could not go sparse, and what to do about it (user-facing).
FALLBACK_HELP = {
    "no_grid": "the IASA APPLY_MODEL wrapper did not see this call, so the token grid is unknown (a node "
               "after IASA Sparse Attention replaced the model's apply function?); put IASA Sparse Attention "
               "last in the model chain",
    "unexpected_length": "self-attention has a different token count than the latent's grid (another patch "
                         "adds or removes tokens, or a model variant this pack does not know); remove that "
                         "patch or report the model type",
    "grid_mismatch": "ComfyUI reports another token grid than the one learnt from the latent; report the "
                     "model type and workflow",
    "no_call_site": "the self-attention call-site patches of IASA Sparse Attention are not active, so "
                    "self-attention cannot be told from cross-attention; put IASA Sparse Attention after any "
                    "node that patches the model's self-attention modules",
    "masked": "ComfyUI passed an attention mask to self-attention, and the sparse kernels take no extra "
              "mask; remove the node that adds the mask",
    "no_layout": "no sparse layout could be built from the pose for this video; check the pose input",
}


class SparseAttentionPatch:
    """Pose, options and layout cache of one IASA Sparse Attention node; shared by every model clone.

    Calls that must stay dense by design (cross-attention, ``dense_blocks``, ``dense_steps``) are only
    counted. Calls that *should* have been sparse but cannot be (a fallback, :data:`FALLBACK_HELP`) are
    counted, logged once per sampling run with their reason, and raise :class:`DenseFallbackError`
    instead when ``strict``. At the end of a run a summary is logged (a warning when nothing ran sparse).
    """

    def __init__(self, pose: PoseSequence, config: SparseAttentionConfig, kernel: str = "auto",
                 dense_blocks: int = 0, dense_steps: int = 0, strict: bool = False,
                 alignment: VideoAlignment = VideoAlignment(), group_tokens: bool = True):
        self.pose = pose
        self.group_tokens = bool(group_tokens)   # keep the DiT's tokens in slot order (token_order)
        self.config = config
        self.alignment = alignment
        self.kernel = kernel
        self.dense_blocks = int(dense_blocks)
        self.dense_steps = int(dense_steps)
        self.strict = bool(strict)
        self.previous_override = None
        self.stats: Counter = Counter()       # every call since creation
        self.run_stats: Counter = Counter()   # calls of the current sampling run
        self._logged: set[str] = set()        # fallbacks already logged in this run
        self._sites_seen = False              # a marked self-attention call ran in this run
        self._layouts: dict = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options: share, don't copy
        return self

    # -- sampling runs (ModelPatcher ON_PRE_RUN / ON_CLEANUP callbacks) ------------------------------
    def start_run(self, *_args) -> None:
        with self._lock:
            self.run_stats = Counter()
            self._logged = set()
            self._sites_seen = False

    def end_run(self, *_args) -> None:
        with self._lock:
            stats = Counter(self.run_stats)
        if not stats:
            return
        routes = ", ".join(f"{k}: {v}" for k, v in sorted(stats.items()))
        fallbacks = {k: v for k, v in stats.items() if k.removeprefix("dense_") in FALLBACK_HELP}
        if stats.get("sparse") and not stats.get("grouped_forwards") and self.group_tokens:
            routes += " (per-layer token gathers: the tokens were not grouped, reason logged above)"
        if fallbacks and not stats.get("sparse"):
            log.warning("IASA sparse attention: this sampling run was fully dense (%s)", routes)
        else:
            log.info("IASA sparse attention: calls of this sampling run: %s", routes)

    def _count(self, route: str) -> None:
        with self._lock:
            self.stats[route] += 1
            self.run_stats[route] += 1

    def fallback(self, reason: str, detail: str) -> None:
        """A video self-attention call goes dense for ``reason``: count it, log once per run, or raise."""
        self._raise_if_strict(reason, detail)
        self._count(f"dense_{reason}")
        message = f"{detail}: {FALLBACK_HELP[reason]}"
        with self._lock:
            first = reason not in self._logged
            self._logged.add(reason)
        if first:
            log.warning("IASA sparse attention falls back to dense attention (logged once per run): %s", message)

    def _raise_if_strict(self, reason: str, detail: str) -> None:
        if self.strict:
            raise DenseFallbackError(f"IASA Sparse Attention (strict): {detail}: {FALLBACK_HELP[reason]}. Turn "
                                     "strict off to run such calls with dense attention instead.")

    def _note(self, call: CallInfo | None, route: str, detail: str | None = None) -> None:
        """Record the route of one attention call: into the wrapper's :class:`CallState` when there is one
        (traceable; applied after the model call), else count / log it now."""
        if route in FALLBACK_HELP:
            self._raise_if_strict(route, detail)
        if call is not None and call.state is not None:
            call.state.notes.append((route, detail))
        else:
            self._apply_note(route, detail)

    def _apply_note(self, route: str, detail: str | None) -> None:
        if route in FALLBACK_HELP:
            self.fallback(route, detail)
        elif route == "grouped":
            self._count("grouped_forwards")
        elif route == "ungrouped":
            self._count("ungrouped_forwards")
            self.log_once_per_run(f"ungrouped:{detail}", logging.WARNING, "IASA sparse attention: tokens not grouped "
                                  "once per forward, every sparse layer gathers them instead (slower, same result): %s",
                                  detail)
        else:
            self._count(route)

    def log_once_per_run(self, key: str, level: int, message: str, *args) -> None:
        with self._lock:
            first = key not in self._logged
            self._logged.add(key)
        if first:
            log.log(level, message, *args)

    def note_from_model(self, transformer_options: dict, route: str, detail: str | None) -> None:
        """What ``token_order.GroupedForward`` did in this model call (recorded, applied after the call)."""
        self._note(transformer_options.get(CALL_KEY), route, detail)

    def is_dense_step(self, step: int | None) -> bool:
        return bool(self.dense_steps) and step is not None and step < self.dense_steps

    # -- layout -----------------------------------------------------------------------------------
    def layout_for(self, call: CallInfo) -> PoseLayout:
        key = (call.grid, call.latent_frames, call.total_frames, call.pixel_start)
        with self._lock:
            if key not in self._layouts:
                if call.pixel_start is not None:   # IASA Keyed Windows: the window's frames as a clip of their own
                    alignment = dataclasses.replace(self.alignment,
                                                    frame_offset=self.alignment.frame_offset + call.pixel_start)
                    self._layouts[key] = build_pose_layout(self.pose, call.grid, self.config, alignment=alignment)
                else:
                    self._layouts[key] = build_pose_layout(
                        self.pose, call.grid, self.config,
                        latent_frames=list(call.latent_frames) if call.latent_frames else None,
                        total_latent_frames=call.total_frames if call.latent_frames else None,
                        alignment=self.alignment)
                self.stats["layouts_built"] += 1
            return self._layouts[key]

    # -- wrappers ---------------------------------------------------------------------------------
    def apply_model_wrapper(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        grid = grid_from_call(executor.class_obj, x, kwargs, c_concat)
        window = transformer_options.get("context_window")
        frames = tuple(int(i) for i in window.index_list) if window is not None and hasattr(window, "index_list") else None
        if frames is not None and len(frames) != grid.video_frames:
            frames = None  # the window also covers reference/extra frames: fit the pose to the window itself
        # IASA Long Video's windows say how long the whole clip is, so the pose is fitted to the whole clip;
        # ComfyUI's own context windows don't (then the pose is fitted to frames 0 .. the window's last).
        total = getattr(window, "total_frames", None) if frames is not None else None
        pixel_start = getattr(window, "pixel_start", None) if window is not None else None
        if pixel_start is not None:
            frames = total = None
        call = CallInfo(grid, step_index(transformer_options), frames, total, pixel_start)
        state = self.prepare_call(call, executor.class_obj, x)
        transformer_options = {**transformer_options, CALL_KEY: dataclasses.replace(call, state=state)}
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            routes = [route for route, _ in state.notes]
            if state.slot_order is not None and "grouped" not in routes and "ungrouped" not in routes:
                state.notes.append(("ungrouped", "IASA's forward_orig patch did not run in this model call"))
            for route, detail in state.notes:
                self._apply_note(route, detail)

    def prepare_call(self, call: CallInfo, model, x: torch.Tensor) -> CallState:
        """Host work of one model call, outside the compiled model: layout, kernel, dense step.

        Also raises dynamo's recompile limit (``gather.ensure_recompile_limit``, 8 entries a block of this model):
        compiling each block separately (``keys=["diffusion_model.blocks.N"]``) can compile a graph per block, as
        per-block values (the layer, the routes recorded so far) are guarded; past the limit dynamo would run the
        remaining blocks eagerly. (The whole-model compile of stock TorchCompileModel is one graph: tested.)"""
        ensure_recompile_limit(recompile_limit_for(model))
        plan = self.layout_for(call)
        kernel = None
        spec = query_spec(model, x, call.grid)
        if plan.layout is not None and spec is not None:
            kernel = prepare_kernel(plan.layout, self.kernel, spec)
        elif plan.layout is not None:
            log.info("IASA sparse attention: the model does not say its heads or dtype (%s); the kernel is "
                     "prepared at the first attention call instead (a graph break under torch.compile)",
                     type(getattr(model, "diffusion_model", model)).__name__)
        dense_step = self.is_dense_step(call.step)
        enabled = self.group_tokens and plan.layout is not None
        if enabled and not dense_step and self.previous_override is not None:
            # the chained override gets dense calls; in slot order they would reach it with permuted tokens
            order, why = None, ("another attention override is chained under IASA's (a core sparse-attention node or "
                                "another pack); it sees the tokens in their own order")
        else:
            order, why = plan_slot_order(enabled, model, kernel, dense_step)
        if why is not None:
            self.log_once_per_run(f"ungrouped:{why}", logging.INFO, "IASA sparse attention: tokens not grouped once "
                                  "per forward, every sparse layer gathers them instead: %s", why)
        return CallState(plan, kernel, dense_step, slot_order=order)

    def attention(self, func, *args, **kwargs):
        """``optimized_attention_override``: sparse for video self-attention, dense for everything else."""
        out = self._sparse(args, kwargs)
        if out is not None:
            return out
        dense = func if self.previous_override is None else (lambda *a, **kw: self.previous_override(func, *a, **kw))
        to = kwargs.get("transformer_options") or {}
        order: SlotOrder | None = to.get(GROUPED_KEY)
        if order is not None and to.get(SELF_ATTN_KEY) is not None:   # dense self-attention in slot order
            return order.dense(dense, args, kwargs)
        return dense(*args, **kwargs)

    def _route(self, args, kwargs) -> tuple[str, str | None]:
        """(route, fallback detail): route "sparse", a by-design dense route, or a fallback reason.

        Self-attention is told by the call site (:class:`SelfAttentionCallSite`), never by length: with
        a video of as many tokens as the text, cross-attention has q and k of equal length too."""
        to = kwargs.get("transformer_options") or {}
        q, k = args[0], args[1]
        seq_q, seq_k = (q.shape[2], k.shape[2]) if kwargs.get("skip_reshape") else (q.shape[1], k.shape[1])
        call: CallInfo | None = to.get(CALL_KEY)
        state = call.state if call is not None else None
        order: SlotOrder | None = to.get(GROUPED_KEY)
        expected = order.num_slots if order is not None else call.grid.seq_len if call is not None else None
        layer = to.get(SELF_ATTN_KEY)
        if layer is None:
            seen = state.sites_seen if state is not None else self._sites_seen
            if seen or seq_q != seq_k or call is None or seq_q != expected:
                return "dense_cross_attention", None
            # Shaped like this video's self-attention, yet unmarked, before any marked call in this run:
            # the call-site patches are not active (another node replaced self_attn.forward?).
            return "no_call_site", (f"an attention call of {seq_q} x {seq_k} tokens (the video's self-attention "
                                    "size) came from no patched self-attention module")
        if state is not None:
            state.sites_seen = True
        else:
            self._sites_seen = True
        if call is None:
            return "no_grid", f"self-attention of {seq_q} tokens arrived without the latent's token grid"
        mask = kwargs.get("mask", args[4] if len(args) > 4 else None)
        if mask is not None:
            return "masked", f"self-attention of {seq_q} tokens came with a mask of shape {tuple(mask.shape)}"
        if seq_q != expected or seq_k != seq_q:
            return "unexpected_length", (f"self-attention has {seq_q} tokens, the latent's grid "
                                         f"({call.grid.describe()}) has {call.grid.seq_len}"
                                         + (f" ({expected} in slot order)" if order is not None else ""))
        native = to.get("grid_sizes")   # newer ComfyUI: (F, Hp, Wp) of the patchified video
        if native is not None and tuple(int(v) for v in native) != call.grid.patch_grid:
            return "grid_mismatch", (f"ComfyUI reports grid_sizes {tuple(int(v) for v in native)}, the latent "
                                     f"gives {call.grid.patch_grid}")
        block = to.get("block_index", layer)   # newer ComfyUI's native block index wins
        if block < self.dense_blocks:
            return "dense_block", None
        if state.dense_step if state is not None else self.is_dense_step(call.step):
            return "dense_step", None
        return "sparse", None

    def _sparse(self, args, kwargs) -> torch.Tensor | None:
        route, detail = self._route(args, kwargs)
        call: CallInfo | None = (kwargs.get("transformer_options") or {}).get(CALL_KEY)
        if route != "sparse":
            self._note(call, route, detail)
            return None
        plan = call.state.plan if call.state is not None else self.layout_for(call)
        if plan.layout is None:
            self._note(call, "no_layout", f"the pose gives no sparse layout for {call.grid.describe()} "
                                          f"({plan.fallback_reason})")
            return None
        q, k, v = args[:3]
        heads = kwargs.get("heads", args[3] if len(args) > 3 else None)
        if kwargs.get("skip_reshape"):
            qh, kh, vh = q, k, v
        else:
            b, seq, hd = q.shape
            qh, kh, vh = (t.view(b, seq, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
        kernel = call.state.kernel if call.state is not None else None
        order: SlotOrder | None = kwargs["transformer_options"].get(GROUPED_KEY)
        if kernel is not None and kernel.fits(qh, slot_order=order is not None):
            out = kernel.slots(qh, kh, vh) if order is not None else kernel(qh, kh, vh)
        else:
            if kernel is not None:
                log.info("IASA sparse attention: the kernel was prepared for %s, the call has %s; preparing "
                         "again (a graph break under torch.compile)", kernel.spec.describe(),
                         QuerySpec.of(qh).describe())
            if order is not None:   # a kernel of another slot order: through token order (gathers)
                qh, kh, vh = (order.to_tokens(t, dim=2) for t in (qh, kh, vh))
            kernel = prepare_kernel(plan.layout, self.kernel, qh)
            out = kernel(qh, kh, vh)
            if order is not None:
                out = order.to_slots(out, dim=2)
        self._note(call, "sparse")
        if kwargs.get("skip_output_reshape"):
            return out
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def query_spec(model, x: torch.Tensor, grid: TokenGrid) -> QuerySpec | None:
    """The q of the self-attention of ComfyUI model ``model`` (a ``BaseModel``) for latent ``x``: heads, head
    dim and compute dtype (``manual_cast_dtype`` or the weights' dtype, as ``BaseModel._apply_model``
    casts); None when the model does not say."""
    dm = getattr(model, "diffusion_model", None)
    heads, dim = getattr(dm, "num_heads", None), getattr(dm, "dim", None)
    if not isinstance(heads, int) or not isinstance(dim, int) or heads < 1 or dim % heads:
        return None
    dtype = getattr(model, "manual_cast_dtype", None)
    if dtype is None and hasattr(model, "get_dtype"):
        dtype = model.get_dtype()
    if not isinstance(dtype, torch.dtype):
        return None
    return QuerySpec(x.device, dtype, heads, grid.seq_len, dim // heads)


def check_wan_model(model_patcher) -> None:
    """Raise a clear error unless ``model_patcher`` holds a ComfyUI Wan-family DiT we can patch."""
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    name = type(dm).__name__
    if dm is None or not hasattr(dm, "blocks") or not hasattr(dm, "patch_size") or "Wan" not in name:
        raise ValueError(f"model: IASA Sparse Attention patches ComfyUI's native Wan models (WanModel and its "
                         f"VACE/Animate/Fun variants); got {name}. Load a Wan 2.1/2.2 model with UNETLoader.")
    if "S2V" in name:
        raise ValueError("model: Wan-S2V does not pass attention options to its blocks in this ComfyUI version, "
                         "so it cannot be patched; use a Wan 2.1/2.2 T2V, I2V, Fun-Control, VACE or Animate model.")


def apply_sparse_attention(model_patcher, patch: SparseAttentionPatch):
    """Clone ``model_patcher`` and install ``patch`` (see module docstring)."""
    import comfy.patcher_extension

    check_wan_model(model_patcher)
    m = model_patcher.clone()
    to = m.model_options.setdefault("transformer_options", {})
    previous = to.get("optimized_attention_override")
    if previous is not None and getattr(previous, "__self__", None) is not patch:
        patch.previous_override = previous
        log.info("IASA sparse attention: chaining the attention override set before it (%s) for dense calls",
                 getattr(previous, "__qualname__", type(previous).__name__))
    to["optimized_attention_override"] = patch.attention
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, patch.apply_model_wrapper)
    m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, KEY, patch.start_run)
    m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, KEY, patch.end_run)
    for path, layer in self_attention_sites(m.model.diffusion_model):
        name = f"diffusion_model.{path}"
        m.add_object_patch(name, SelfAttentionCallSite(m.get_model_object(name), layer))
    if patch.group_tokens:
        install_grouping(m, _call_state, patch.note_from_model)
    return m


def _call_state(transformer_options: dict) -> CallState | None:
    call = transformer_options.get(CALL_KEY)
    return call.state if call is not None else None
