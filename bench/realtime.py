"""Real time on one GPU: the whole student path at 480p x 81 frames, each term next to its arithmetic floor,
against the dense teacher measured in the same run -> bench/results/realtime.json.

    python iasa_cli.py bench.realtime [--out bench/results/realtime.json] [--steps 1 2 4] [--vaes wan tiny]
    python iasa_cli.py bench.realtime --tiny --compile eager --out /tmp/rt.json      # CPU dry run (tiny shapes)
    python iasa_cli.py bench.realtime --table bench/results/realtime.json          # README table (markdown)

Everything goes through ComfyUI's own modules, random weights (speed does not depend on them):

* DiT: ``WanModel`` in the Wan2.1-1.3B shape (dim 1536, 30 layers, 12 heads, ffn 8960) with Fun-Control
  inputs (``in_dim`` 48 = noise | pose-video latent | empty start-image channels) and ``ref_conv`` reference
  tokens (the IASA-mini / Wan 2.1 Fun 1.1 layout), loaded by ``comfy.sd.load_diffusion_model_state_dict``
  (what UNETLoader does), bf16; every schedule is given as SIGMAS at shift 5 (the model's own shift is then
  unused). Every block is compiled by ComfyUI's
  ``set_torch_compile_wrapper`` (the helper behind stock TorchCompileModel) with the block keys
  ``diffusion_model.blocks.<i>``, ``dynamic=False``.
* student: IASA Sparse Attention as the node applies it (``attention.patch.apply_sparse_attention`` with a
  ``SparseAttentionPatch`` of a synthetic talking pose: K=2, causal, block 128, kernel flex), N steps of the
  shift-5 student schedule (the repo's ``StudentSchedule.default``: 4 steps = timesteps 1000, 937.5, 833.3,
  625), strict (a dense fallback raises),
  cfg 1, sampler lcm, through ``comfy.sample.sample_custom`` (SamplerCustom). ``student_dense``: the same
  without the patch. ``student_fp8``: the student with the DiT loaded as UNETLoader's ``fp8_e4m3fn_fast`` loads it
  (fp8 weights and, where the GPU has fp8 compute, ComfyUI's fp8 matmuls; its floor stays the bf16 one).
  ``student_no_self_attention`` (a diagnostic): the same with video self-attention returning
  v, the floor of any attention kernel in this path. ``teacher`` (the baseline): dense, 20 steps of the ``simple`` schedule, cfg 5 (cond and
  uncond batched), euler, stock Wan VAE.
* VAEs, built by ``comfy.sd.VAE`` from state dicts (what VAELoader does): ``wan`` = the Wan 2.1 VAE at its real
  width 96; ``wan_channels_last`` = the same through IASA VAE Precision with ``memory_format = channels_last``
  (its 3-D convolution weights channels-last, so cuDNN runs them in NDHWC; dtype unchanged); ``tiny`` = the
  taew2_1-layout tiny autoencoder (``training/tiny_vae.py``), run with all frames at once as the pack's IASA Tiny
  VAE Mode node sets it (ComfyUI's default, frame by frame, is reported in ``device_ms``); ``tiny_encode`` = what the
  pack's student workflow runs: the tiny autoencoder encodes the pose video (and the reference), the channels-last
  stock VAE decodes.
* per record, timed with the device synchronised: ``ms_encode`` = ``vae.encode(pose video)`` (VAEEncode:
  IMAGE on the host in, LATENT out), ``ms_dit`` = ``sample_custom`` (noise on the host, LATENT out),
  ``ms_decode`` = ``vae.decode`` (VAEDecode: IMAGE on the host; on the GPU where ``--comfy-flags=--gpu-only``
  runs ComfyUI as its ``--gpu-only`` does: ``settings.frames_on``); ``fps`` = frames / total seconds;
  ``first_chunk_ms``: the same pipeline on a clip of 4 latent frames (13 pixel frames). The DiT samples on the
  encoded pose video: :func:`fun_control_conditioning` lays it out exactly as stock ``Wan22FunControlToVideo``
  does (tested against the node; the node itself imports PyAV, which the GPU image lacks); the reference
  picture's latent is encoded once per shape, untimed (once per session in a live pipeline). Medians over
  ``--repeats`` after a one-step warm-up per compiled path and shape.
* floors: ``floor.ms_dit`` = forwards x (linear-layer FLOPs, counted on the real forward + self-attention
  FLOPs at the pose layout's exact token density + cross-attention FLOPs) / measured bf16 GEMM peak;
  ``floor.ms_encode`` / ``ms_decode`` = the VAE's FLOPs (``torch.utils.flop_counter``) / the same peak + the
  host<->device copy of the pixels at the measured pageable bandwidth.

Today's patch under compiled blocks (found by the CPU dry runs, for attention/): a layout built inside a
compiled block makes dynamo trace the pose rasteriser (numpy/cv2 in pose/regions.py) and fail
(TorchRuntimeError), so the warm-up runs one uncompiled step per patched model first, and the layout is then
found in the patch's cache. The functions that hit the recompile limit and fell back to eager are listed
in ``compile_stats.recompile_limit_hits`` (on the CPU: ComfyUI's sub-quadratic attention, which guards on the
free memory).

Expected on one H200 (update-2026-12.md): ~6-8 minutes, most of it compiling (six compiled paths x shapes)
and the teacher (40 forwards + the stock VAE, ~25 s per run).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..attention.patch import FALLBACK_HELP, SparseAttentionPatch, apply_sparse_attention
from ..attention.pose_layout import REFERENCE_ATTENDS, SparseAttentionConfig, build_pose_layout
from ..pose.keypoints import PoseSequence
from ..pose.render import render_pose
from ..pose.synthetic import talking_pose
from ..sampling.vae_precision import PRECISIONS, conv_weight_layout, with_precision
from ..training.comfy_env import apply_comfy_flags, ensure_comfy_on_path
from ..training.distill.schedule import StudentSchedule
from ..training.flow import simple_sigmas
from ..training.teacher_data import token_grid
from ..training.tiny_vae import build_tiny_vae, latent_frames, pixel_frames, with_all_frames_at_once
from ..training.tiny_wan import LATENT_CHANNELS, TeacherConfig, VAEConfig, build_teacher, build_vae
from . import floors
from .realtime_report import aims, markdown_table
from .run_info import FLASH_DISTRIBUTIONS, LimitHits, comfy_attention, comfy_fast, compile_stats, versions
from .wan_forward import self_attention_override, with_override

RESULTS = Path(__file__).parent / "results" / "realtime.json"
WAN_1_3B = dict(dim=1536, num_layers=30, ffn_dim=8960)
TINY_DIT = dict(dim=256, num_layers=2, ffn_dim=512)
CONTEXT_TOKENS = 512
SHIFT = 5.0
TEACHER = {"steps": 20, "cfg": 5.0, "sampler": "euler", "scheduler": "simple"}
STUDENT = {"cfg": 1.0, "sampler": "lcm"}
# student_no_self_attention: the student's pipeline with video self-attention returning v (a diagnostic, not a
# result): the floor any attention kernel can reach in this compiled path, so a record's DiT ms splits into
# attention and the rest.
NO_SELF_ATTENTION = "student_no_self_attention"
# student_fp8: the student path with the DiT loaded as stock UNETLoader's weight_dtype "fp8_e4m3fn_fast" loads it
# (fp8 weights; on GPUs with fp8 compute, ComfyUI's fp8 matmuls with unscaled fp8 activations). A user's option,
# reported beside the bf16 student; its quality is not measured by this benchmark (random weights).
FP8 = "student_fp8"
FP8_MODEL_OPTIONS = {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}   # UNETLoader "fp8_e4m3fn_fast"
VARIANTS = ("student", "student_dense", NO_SELF_ATTENTION, FP8, "teacher")
WAN_CHANNELS_LAST = "wan_channels_last"
# tiny_encode: what the pack's student workflow runs, the tiny autoencoder encodes the pose video and the stock VAE
# decodes (channels-last, as IASA VAE Precision's auto lays it on Hopper). Name -> (encoder, decoder).
TINY_ENCODE = "tiny_encode"
SPLIT_VAES = {TINY_ENCODE: ("tiny", WAN_CHANNELS_LAST)}
VAE_NAMES = ("wan", WAN_CHANNELS_LAST, "tiny", TINY_ENCODE)


def coders(vae: str) -> tuple[str, str]:
    """The VAEs that encode and decode for a ``--vaes`` name."""
    return SPLIT_VAES.get(vae, (vae, vae))


def split_vae_terms(per_vae: dict) -> dict:
    """``per_vae`` (one VAE's device ms and FLOPs each) with every split name added: the encode terms of its
    encoder and the decode terms of its decoder."""
    out = dict(per_vae)
    for name, (enc, dec) in SPLIT_VAES.items():
        if enc in per_vae and dec in per_vae:
            out[name] = {**{k: v for k, v in per_vae[enc].items() if k.startswith("encode")},
                         **{k: v for k, v in per_vae[dec].items() if k.startswith("decode")}}
    return out


@dataclass(frozen=True)
class Shape:
    frames: int
    height: int
    width: int

    @property
    def latent(self) -> tuple[int, int, int, int]:
        return (LATENT_CHANNELS, latent_frames(self.frames), self.height // 8, self.width // 8)


@dataclass(frozen=True)
class Spec:
    variant: str
    steps: int
    vae: str

    @property
    def cfg(self) -> float:
        return TEACHER["cfg"] if self.variant == "teacher" else STUDENT["cfg"]

    @property
    def sparse(self) -> bool:
        return self.variant in ("student", FP8)


def student_sigmas(steps: int) -> torch.Tensor:
    """The repo's default student schedule (``training.distill.schedule``) at shift 5: 4 steps = timesteps
    1000, 937.5, 833.3, 625 (lightx2v's 4-step Wan schedule), 2 steps = 1000, 833.3, 1 step = 1000."""
    return StudentSchedule.default(steps, SHIFT).sigmas()


def fp8_matmul_runs(patcher, device: torch.device) -> bool:
    """Whether the fp8 model's linears multiply in fp8 here (ComfyUI's ``fp8_linear`` on one of its layers): False
    where ComfyUI has no fp8 compute for the device (it then casts the fp8 weights). ComfyUI's own layer catches a
    failing fp8 matmul and falls back quietly; this probe raises instead, so a record never calls a cast fp8."""
    import comfy.model_management
    import comfy.ops

    if not comfy.model_management.supports_fp8_compute(device):
        return False
    layer = patcher.model.diffusion_model.blocks[0].self_attn.q
    x = torch.randn(1, 16, layer.in_features, device=device, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = comfy.ops.fp8_linear(layer, x)
    if out is None:
        raise RuntimeError(f"student_fp8: the layer's weight is {layer.weight.dtype}, not float8_e4m3fn")
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fun_control_conditioning(context: list, control: torch.Tensor, reference: torch.Tensor, shape: Shape):
    """``(positive, negative, empty latent)`` as stock ``Wan22FunControlToVideo`` returns them for
    ``ref_image`` + ``control_video`` (positive) and ``ref_image`` alone (negative: the IASA-mini CFG negative),
    from the already-encoded ``control`` (pose video) and ``reference`` latents."""
    import comfy.latent_formats
    import node_helpers

    c, f, h, w = shape.latent
    empty = comfy.latent_formats.Wan21().process_out(torch.zeros(1, c, f, h, w)).repeat(1, 2, 1, 1, 1)
    mask = torch.ones((1, 1, f * 4, h, w)).view(1, f, 4, h, w).transpose(1, 2)
    out = []
    for video in (control, None):
        concat = empty.clone()
        if video is not None:
            concat[:, :c, :video.shape[2]] = video[:, :, :f]
        cond = node_helpers.conditioning_set_values(context, {"concat_latent_image": concat, "concat_mask": mask,
                                                              "concat_mask_index": c})
        out.append(node_helpers.conditioning_set_values(cond, {"reference_latents": [reference]}, append=True))
    return out[0], out[1], torch.zeros(1, c, f, h, w)


class RealtimeBench:
    """Models, VAEs, inputs and conditioning of one run; :meth:`pipeline` times one record's three terms."""

    def __init__(self, a: argparse.Namespace):
        ensure_comfy_on_path()
        import comfy.model_management
        import comfy.sd

        self.a = a
        self.device = comfy.model_management.get_torch_device()
        # where VAEEncode's LATENT and VAEDecode's IMAGE land: the host, unless ComfyUI runs with --gpu-only
        self.frames_on_host = comfy.model_management.intermediate_device() != self.device
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.shape = Shape(a.frames, a.height, a.width)
        self.chunk = Shape(pixel_frames(a.chunk_latent_frames), a.height, a.width)
        dit_cfg = TINY_DIT if a.tiny else WAN_1_3B
        self.dit_config = TeacherConfig(in_dim=3 * LATENT_CHANNELS, ref_conv=True, **dit_cfg)
        net = build_teacher(self.dit_config, seed=0, device=self.device)
        sd = {k: v.to(self.dtype) for k, v in net.state_dict().items()}
        del net
        # the loader takes the tensors out of the dict it is given: each load gets its own (shallow) copy
        self.base = comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options={"dtype": self.dtype})
        self.base_fp8 = (comfy.sd.load_diffusion_model_state_dict(dict(sd), model_options=dict(FP8_MODEL_OPTIONS))
                         if FP8 in a.variants else None)
        self.fp8_compute = fp8_matmul_runs(self.base_fp8, self.device) if self.base_fp8 is not None else None
        del sd
        self.vaes = {}
        for name in dict.fromkeys(n for v in a.vaes for n in coders(v)):   # the real VAEs the names need
            if name == "tiny":
                vae_sd = build_tiny_vae(seed=0).state_dict()
            else:
                vae_sd = build_vae(VAEConfig(dim=a.wan_vae_dim), seed=0).state_dict()
            vae = comfy.sd.VAE(sd={k: v.to(self.dtype) for k, v in vae_sd.items()})
            if name == "tiny":      # what IASA Tiny VAE Mode gives (ComfyUI's default is frame by frame)
                vae = with_all_frames_at_once(vae, True)
                vae.first_stage_model.show_progress_bar = False
            elif name == WAN_CHANNELS_LAST:   # what IASA VAE Precision gives with memory_format = channels_last
                same_dtype = next(key for key, dtype in PRECISIONS.items() if dtype == self.dtype)
                vae = with_precision(vae, same_dtype, memory_format="channels_last")
            self.vaes[name] = vae
        del vae   # a frame of this call can outlive it (a stored traceback): keep no patcher in its locals
        pose = talking_pose(n_frames=self.shape.frames, width=a.width, height=a.height)
        self.poses = {s: PoseSequence(pose.points[: s.frames], pose.width, pose.height) for s in (self.shape, self.chunk)}
        self.video = {s: torch.from_numpy(render_pose(p)) for s, p in self.poses.items()}   # IMAGE [T, H, W, 3]
        self.layout_config = SparseAttentionConfig(top_k=a.top_k, causal=True, block_size=a.block_size,
                                                   reference_attends=a.reference_attends)
        self.patches: dict[tuple[str, Shape], SparseAttentionPatch] = {}
        self.models: dict[tuple[str, Shape], object] = {}
        self.eager: dict[tuple[str, Shape], object] = {}
        self._refs: dict = {}
        self.teacher_sigmas = simple_sigmas(SHIFT, a.teacher_steps)   # == ComfyUI's simple scheduler (tested)

    def close(self) -> None:
        """Drop the model patchers while ComfyUI's modules are alive (their ``__del__`` fails at exit)."""
        import gc

        import comfy.model_management

        self.models.clear()
        self.eager.clear()
        self.patches.clear()
        self.vaes.clear()
        self._refs.clear()
        self.base = self.base_fp8 = None
        comfy.model_management.unload_all_models()
        torch._dynamo.reset()     # compiled code holds the blocks and, through guards, their patchers
        gc.collect()

    # ------------------------------------------------------------------------------------ models
    def model(self, spec: Spec, shape: Shape):
        """The ModelPatcher of a variant for one clip (the pose is the clip's): patched (student) or not, then
        every block compiled (the compiled code is shared: dynamo caches per code object and shape)."""
        key = (spec.variant, shape)
        if key not in self.models:
            m = self.base_fp8 if spec.variant == FP8 else self.base
            if spec.sparse:
                patch = SparseAttentionPatch(self.poses[shape], self.layout_config, kernel=self.a.kernel, strict=True)
                m = apply_sparse_attention(m, patch)
                self.patches[key] = patch
            elif spec.variant == NO_SELF_ATTENTION:
                m = with_override(m, self_attention_override("none"))
            self.eager[key] = m
            if self.a.compile != "none":
                from comfy_api.torch_helpers import set_torch_compile_wrapper

                m = m.clone()   # shares the patch (its layout cache) with the eager model
                keys = [f"diffusion_model.blocks.{i}" for i in range(self.dit_config.num_layers)]
                set_torch_compile_wrapper(model=m, backend=self.a.compile, keys=keys, dynamic=False)
            self.models[key] = m
        return self.models[key]

    def warm_up(self, variant: str, vae: str, shape: Shape) -> None:
        """One step uncompiled (a patched model builds its layout here, outside compiled code: built inside a
        compiled block, dynamo traces the pose rasteriser's numpy/cv2 code and fails), then one full pipeline
        step compiled (compiles this path and shape, cuDNN autotuning)."""
        spec = Spec(variant, 1, vae)
        self.model(spec, shape)
        self.sample(spec, shape, model=self.eager[(variant, shape)])
        self.pipeline(spec, shape)

    def patch_stats(self, spec: Spec) -> dict:
        """Attention calls the IASA patch routed, summed over the clip shapes ({} for dense variants)."""
        total: dict = {}
        for (variant, _shape), patch in self.patches.items():
            if variant == spec.variant:
                for k, v in patch.stats.items():
                    total[k] = total.get(k, 0) + int(v)
        return total

    def sigmas(self, spec: Spec) -> torch.Tensor:
        """Student: the shift-5 schedule of ``steps``; teacher: the first ``steps`` of its ``simple`` schedule
        (all of them in timed runs; one in the warm-up)."""
        if spec.variant == "teacher":
            return self.teacher_sigmas[: spec.steps + 1]
        return student_sigmas(spec.steps)

    # ------------------------------------------------------------------------------ conditioning
    def reference_latent(self, vae: str, shape: Shape) -> torch.Tensor:
        """The reference picture's latent (encoded once per session in a live pipeline: untimed)."""
        if (vae, shape) not in self._refs:
            self._refs[(vae, shape)] = self.vaes[coders(vae)[0]].encode(self.video[shape][:1])
        return self._refs[(vae, shape)]

    # ---------------------------------------------------------------------------------- pipeline
    def sample(self, spec: Spec, shape: Shape, control: torch.Tensor | None = None, model=None):
        """``SamplerCustom`` on the Fun-Control conditioning of ``control`` (the pose video's latent; encoded
        here, untimed, when not given)."""
        import comfy.sample
        import comfy.samplers

        if control is None:
            control = self.vaes[coders(spec.vae)[0]].encode(self.video[shape])
        ctx = [[torch.zeros(1, CONTEXT_TOKENS, 4096), {}]]
        pos, neg, latent = fun_control_conditioning(ctx, control, self.reference_latent(spec.vae, shape), shape)
        noise = comfy.sample.prepare_noise(latent, 0)
        sampler = comfy.samplers.sampler_object(TEACHER["sampler"] if spec.variant == "teacher" else STUDENT["sampler"])
        return comfy.sample.sample_custom(model or self.model(spec, shape), noise, spec.cfg, sampler, self.sigmas(spec),
                                          pos, neg, latent, disable_pbar=True, seed=0)

    def pipeline(self, spec: Spec, shape: Shape) -> dict:
        """Encode the pose video, sample on its latent, decode: wall ms of each term (device synchronised)."""
        encoder, decoder = (self.vaes[n] for n in coders(spec.vae))
        self.reference_latent(spec.vae, shape)
        _sync(self.device)
        t0 = time.perf_counter()
        control = encoder.encode(self.video[shape])
        _sync(self.device)
        t1 = time.perf_counter()
        samples = self.sample(spec, shape, control)
        _sync(self.device)
        t2 = time.perf_counter()
        decoder.decode(samples)
        _sync(self.device)
        t3 = time.perf_counter()
        return {"ms_encode": 1000 * (t1 - t0), "ms_dit": 1000 * (t2 - t1), "ms_decode": 1000 * (t3 - t2)}

    # ------------------------------------------------------------------------------------ floors
    def dit_flops(self, shape: Shape) -> dict:
        """Per forward (batch 1): linear FLOPs counted on a real eager forward, attention FLOPs analytically."""
        spec = Spec("student_dense", 1, next(iter(self.vaes)))
        dm = self.base.model.diffusion_model
        with floors.linear_flops(dm) as counter:
            self.sample(spec, shape, model=self.base)
        grid = token_grid(shape.latent[1:], ref_tokens=True)
        plan = build_pose_layout(self.poses[shape], grid, self.layout_config)   # what the patch builds
        if plan.layout is None:
            raise RuntimeError(f"the benchmark pose gives no sparse layout on {grid.describe()}: {plan.fallback_reason}")
        d, layers = self.dit_config.dim, self.dit_config.num_layers
        L = grid.seq_len
        return {"tokens": L, "video_tokens": grid.video_tokens, "reference_tokens": grid.global_tokens,
                "linear": counter.flops, "self_attention_dense": floors.attention_flops(L, L, d, layers),
                "self_attention_exact": floors.attention_flops(L, L, d, layers, plan.density.token_density),
                "cross_attention": floors.attention_flops(L, CONTEXT_TOKENS, d, layers),
                "density": plan.density.as_dict()}

    def vae_device(self, name: str, shape: Shape) -> dict:
        """Device-only encode / decode (module level, inputs on the device): ms and FLOPs."""
        import comfy.model_management

        vae = self.vaes[name]
        comfy.model_management.load_models_gpu([vae.patcher])
        fsm = vae.first_stage_model
        px = vae.process_input(self.video[shape].movedim(-1, 0)[None]).to(self.device, vae.vae_dtype)
        with torch.inference_mode():
            z = fsm.encode(px)
            enc = lambda: fsm.encode(px)  # noqa: E731
            dec = lambda: fsm.decode(z)   # noqa: E731
            out = {"encode_ms": floors.time_ms(enc, self.device, self.a.repeats),
                   "decode_ms": floors.time_ms(dec, self.device, self.a.repeats),
                   "encode_flops": floors.all_flops(enc), "decode_flops": floors.all_flops(dec)}
            if name == "tiny":
                slow = with_all_frames_at_once(vae, False).first_stage_model
                out["decode_ms_frame_by_frame"] = floors.time_ms(lambda: slow.decode(z), self.device, 1)
        return out


def term_floors(spec: Spec, shape: Shape, bench: "RealtimeBench", dit: dict, vae: dict, fl: dict) -> dict:
    """Floor ms of each term of one pipeline (see the module docstring) and the FPS they allow."""
    forwards = spec.steps * (2 if spec.cfg != 1.0 else 1)
    attn = (0.0 if spec.variant == NO_SELF_ATTENTION else
            dit["self_attention_exact"] if spec.sparse else dit["self_attention_dense"])
    peak = fl["matmul"]["tflops"]
    px = bench.video[shape].numel() * 4       # float32 IMAGE on the host, copied in (encode) and out (decode)
    out_px = px if bench.frames_on_host else 0  # --gpu-only: the decoded IMAGE stays on the GPU
    floor = {"ms_encode": floors.floor_ms(vae["encode_flops"], peak) + floors.copy_ms(px, fl["copy"]["h2d_gbps"]),
             "ms_dit": forwards * floors.floor_ms(dit["linear"] + attn + dit["cross_attention"], peak),
             "ms_decode": floors.floor_ms(vae["decode_flops"], peak) + floors.copy_ms(out_px, fl["copy"]["d2h_gbps"])}
    floor["ms_total"] = sum(floor.values())
    floor["fps"] = shape.frames / (floor["ms_total"] / 1000)
    return floor


def _total(run: dict) -> float:
    return run["ms_encode"] + run["ms_dit"] + run["ms_decode"]


def record(spec: Spec, runs: list[dict], chunk_runs: list[dict], bench: "RealtimeBench", fl: dict) -> dict:
    rec = {"variant": spec.variant, "steps": spec.steps, "vae": spec.vae, "cfg": spec.cfg,
           "weights": "fp8_e4m3fn_fast (UNETLoader)" if spec.variant == FP8 else str(bench.dtype).removeprefix("torch."),
           **({"fp8_matmul": bench.fp8_compute} if spec.variant == FP8 else {}),
           "attention": f"iasa_{bench.a.kernel}" if spec.sparse else (
               "none (diagnostic)" if spec.variant == NO_SELF_ATTENTION else "dense"),
           **{k: round(statistics.median(r[k] for r in runs), 2) for k in ("ms_encode", "ms_dit", "ms_decode")}}
    rec["ms_total"] = round(statistics.median(_total(r) for r in runs), 2)
    rec["fps"] = round(bench.shape.frames / (rec["ms_total"] / 1000), 2)
    rec["first_chunk_ms"] = round(statistics.median(_total(r) for r in chunk_runs), 2)
    rec["repeats"] = len(runs)
    floor = term_floors(spec, bench.shape, bench, fl["dit"], fl["vae"][spec.vae], fl)
    chunk_floor = term_floors(spec, bench.chunk, bench, fl["dit_first_chunk"], fl["vae_first_chunk"][spec.vae], fl)
    rec["floor"] = {k: round(v, 2) for k, v in floor.items()}
    rec["floor"]["first_chunk_ms"] = round(chunk_floor["ms_total"], 2)
    rec["x_floor"] = {k: round(rec[k] / floor[k], 2) if floor[k] > 0 else None
                      for k in ("ms_encode", "ms_dit", "ms_decode", "ms_total")}
    rec["sparse_calls"] = bench.patch_stats(spec)     # over the whole run of this variant (every step count)
    bad = {k: v for k, v in rec["sparse_calls"].items() if k.removeprefix("dense_") in FALLBACK_HELP}
    if spec.sparse and (not rec["sparse_calls"].get("sparse") or bad):
        raise RuntimeError(f"{spec}: the IASA patch did not run every video self-attention sparse "
                           f"({rec['sparse_calls']}); the record would time dense attention")
    return rec


def specs_for(a: argparse.Namespace) -> list[Spec]:
    out = []
    fast_vae = "tiny" if "tiny" in a.vaes else a.vaes[0]
    if "student" in a.variants:
        out += [Spec("student", n, v) for v in a.vaes for n in a.steps]
    out += [Spec(variant, max(a.steps), fast_vae) for variant in ("student_dense", NO_SELF_ATTENTION, FP8)
            if variant in a.variants]
    if "teacher" in a.variants:
        out.append(Spec("teacher", a.teacher_steps, "wan" if "wan" in a.vaes else a.vaes[0]))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench.realtime", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--table", type=Path, default=None, help="print the README table of this results JSON and exit")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run: tiny DiT / VAE, 9 frames at 64 x 96")
    ap.add_argument("--frames", type=int, default=None, help="pixel frames (1 + 4k); default 81 (9 with --tiny)")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--chunk-latent-frames", type=int, default=None, help="first chunk (default 4; 3 with --tiny)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="student step counts")
    ap.add_argument("--teacher-steps", type=int, default=TEACHER["steps"])
    ap.add_argument("--vaes", nargs="+", choices=VAE_NAMES, default=["wan", "tiny"],
                    help=f"{WAN_CHANNELS_LAST}: the stock Wan VAE, 3-D convolutions channels-last (IASA VAE Precision)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--teacher-repeats", type=int, default=1)
    ap.add_argument("--compile", choices=("inductor", "eager", "none"), default="inductor",
                    help="torch.compile backend for every block ('eager': dynamo only, for dry runs)")
    ap.add_argument("--recompile-limit", type=int, default=16,
                    help="torch._dynamo recompile limit per code object (torch's default 8): a block needs one entry "
                         "per path x shape (6 here); a frame that recompiles on every call runs eagerly once it hits "
                         "the limit (listed in compile_stats)")
    ap.add_argument("--kernel", default=None, help="IASA kernel (default flex on CUDA, sdpa on CPU)")
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--reference-attends", choices=REFERENCE_ATTENDS, default="everything")
    ap.add_argument("--block-size", type=int, default=None, help="default 128 (4 with --tiny)")
    ap.add_argument("--wan-vae-dim", type=int, default=None, help="Wan VAE width (default 96, the real one; 8 tiny)")
    ap.add_argument("--comfy-flags", default="",
                    help="ComfyUI command-line flags for the whole run, teacher included, e.g. "
                         "--comfy-flags='--gpu-only --fast autotune' (IMAGE stays on the GPU; cuDNN autotuning)")
    a = ap.parse_args(argv)
    tiny = a.tiny
    # --tiny: the smallest clip on which the pose layout is cheaper than dense with the reference tokens (the
    # patch refuses a costlier one), and its chunk is the whole clip for the same reason.
    for name, full, small in (("frames", 81, 9), ("height", 480, 64), ("width", 832, 96),
                              ("chunk_latent_frames", 4, 3), ("block_size", 128, 4), ("wan_vae_dim", 96, 8)):
        if getattr(a, name) is None:
            setattr(a, name, small if tiny else full)
    if (a.frames - 1) % 4:
        ap.error(f"--frames must be 1 + 4k, got {a.frames}")
    if a.height % 16 or a.width % 16:
        ap.error(f"--height/--width must be multiples of 16 (Wan tokens), got {a.height} x {a.width}")
    if pixel_frames(a.chunk_latent_frames) > a.frames:
        ap.error(f"--chunk-latent-frames {a.chunk_latent_frames} is longer than the clip ({a.frames} frames)")
    if a.kernel is None:
        a.kernel = "flex" if torch.cuda.is_available() else "sdpa"
    return a


def assemble(a, argv, bench: RealtimeBench, fl: dict, specs: list[Spec], runs: dict, chunk_runs: dict,
             warm_s: float, t_start: float, limit_hits: "LimitHits", partial: bool) -> dict:
    """The results JSON (written to ``--out``) from the runs so far."""
    dev = bench.device
    cuda = dev.type == "cuda"
    records = [record(s, runs[s], chunk_runs[s], bench, fl) for s in specs if runs[s]]
    teacher = next((x for x in records if x["variant"] == "teacher"), None)
    for rec in records:
        rec["speedup_vs_teacher"] = round(teacher["ms_total"] / rec["ms_total"], 2) if teacher else None
    result = {
        "command": "python iasa_cli.py bench.realtime " + " ".join(argv),
        "gpu": torch.cuda.get_device_name(dev) if cuda else "none (CPU dry run, tiny shapes: not a measurement)",
        "versions": versions(distributions=FLASH_DISTRIBUTIONS), "date": time.strftime("%Y-%m-%d"),
        "shape": {"frames": bench.shape.frames, "height": a.height, "width": a.width, "latent": list(bench.shape.latent),
                  "first_chunk_frames": bench.chunk.frames, "tokens": fl["dit"]["tokens"],
                  "reference_tokens": fl["dit"]["reference_tokens"]},
        "model": {"dit": {**vars(bench.dit_config), "parameters": sum(p.numel() for p in bench.base.model.diffusion_model.parameters()),
                          "dtype": str(bench.dtype).removeprefix("torch.")},
                  "wan_vae_dim": a.wan_vae_dim, "tiny_vae": "taew2_1 layout, parallel",
                  "vae_conv_layout": {name: conv_weight_layout(vae.first_stage_model) for name, vae in bench.vaes.items()}},
        "settings": {"compile": {"backend": a.compile, "keys": "diffusion_model.blocks.<i>", "dynamic": False,
                                 "recompile_limit": torch._dynamo.config.cache_size_limit},
                     "kernel": a.kernel, "comfy_attention": comfy_attention(), "layout": vars(bench.layout_config),
                     "comfy_flags": shlex.split(a.comfy_flags), "comfy_fast": comfy_fast(),
                     "frames_on": "host" if bench.frames_on_host else "device",
                     "cudnn_benchmark": torch.backends.cudnn.benchmark,
                     "shift": SHIFT,
                     "student": {**STUDENT, "sigmas": {n: [round(float(s), 4) for s in student_sigmas(n)] for n in a.steps}},
                     "teacher": {**TEACHER, "steps": a.teacher_steps}},
        "peak": {"matmul": fl["matmul"], "copy": fl["copy"]},
        "flops": {"dit_per_forward": {k: v for k, v in fl["dit"].items() if k != "density"},
                  "dit_first_chunk_per_forward": {k: v for k, v in fl["dit_first_chunk"].items() if k != "density"},
                  "vae": {k: {"encode": v["encode_flops"], "decode": v["decode_flops"]} for k, v in fl["vae"].items()},
                  "vae_first_chunk": {k: {"encode": v["encode_flops"], "decode": v["decode_flops"]}
                                      for k, v in fl["vae_first_chunk"].items()}},
        "density": fl["dit"]["density"],
        "device_ms": {k: {kk: round(vv, 2) for kk, vv in v.items() if "_ms" in kk} for k, v in fl["vae"].items()},
        "device_ms_first_chunk": {k: {kk: round(vv, 2) for kk, vv in v.items() if "_ms" in kk}
                                  for k, v in fl["vae_first_chunk"].items()},
        "compile_stats": {**compile_stats(), "recompile_limit_hits": limit_hits.functions},
        "warmup_s": round(warm_s, 1),
        "records": records, "aims": aims(records, cuda), "total_s": round(time.perf_counter() - t_start, 1),
        **({"partial": "written after each round of repeats; the run did not finish"} if partial else {}),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    if a.table:
        print(markdown_table(json.loads(a.table.read_text())))
        return {}
    if a.comfy_flags:
        apply_comfy_flags(shlex.split(a.comfy_flags))
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = a.recompile_limit      # alias of recompile_limit in newer torch
    limit_hits = LimitHits.install()
    # ComfyUI's executor runs every node under inference mode; without it the VAE and the DiT record autograd
    # (the random weights require grad), which ran the stock VAE out of memory into its tiled fallback and
    # slowed the DiT (the first H200 run, docs/training/v2_run4/realtime_partial.log).
    with torch.inference_mode():
        return run(a, argv, limit_hits)


def run(a: argparse.Namespace, argv: list[str], limit_hits: "LimitHits") -> dict:
    """Every measurement of one benchmark run (under the caller's inference mode)."""
    t_start = time.perf_counter()
    bench = RealtimeBench(a)
    dev = bench.device
    cuda = dev.type == "cuda"
    specs = specs_for(a)
    d = bench.dit_config.dim
    tokens = bench.shape.latent[1] * bench.shape.latent[2] * bench.shape.latent[3] // 4
    fl = {"matmul": floors.matmul_peak(dev, [(tokens, d, bench.dit_config.ffn_dim), (tokens, bench.dit_config.ffn_dim, d),
                                             (8192, 8192, 8192) if cuda else (256, 256, 256)]),
          "copy": floors.copy_bandwidth(dev, bench.video[bench.shape].numel() * 4),
          "dit": bench.dit_flops(bench.shape), "dit_first_chunk": bench.dit_flops(bench.chunk),
          "vae": split_vae_terms({name: bench.vae_device(name, bench.shape) for name in bench.vaes}),
          "vae_first_chunk": split_vae_terms({name: bench.vae_device(name, bench.chunk) for name in bench.vaes})}
    print(f"matmul peak {fl['matmul']['tflops']} TFLOP/s; DiT linear {fl['dit']['linear'] / 1e12:.3f} TFLOP per forward",
          flush=True)
    t_warm = time.perf_counter()
    for variant, vae in dict.fromkeys((s.variant, s.vae) for s in specs):   # compiles, cuDNN autotuning
        for shape in (bench.shape, bench.chunk):
            bench.warm_up(variant, vae, shape)
    warm_s = time.perf_counter() - t_warm
    print(f"warm-up (compiling) {warm_s:.1f} s", flush=True)
    runs: dict[Spec, list] = {s: [] for s in specs}
    chunk_runs: dict[Spec, list] = {s: [] for s in specs}
    result = {}
    for r in range(a.repeats):
        for spec in specs:
            if spec.variant == "teacher" and r >= a.teacher_repeats:
                continue
            runs[spec].append(bench.pipeline(spec, bench.shape))
            chunk_runs[spec].append(bench.pipeline(spec, bench.chunk))
            print(f"{spec.variant:14s} steps {spec.steps:2d} vae {spec.vae:4s} run {r}: "
                  f"{json.dumps({k: round(v, 1) for k, v in runs[spec][-1].items()})}", flush=True)
        result = assemble(a, argv, bench, fl, specs, runs, chunk_runs, warm_s, t_start, limit_hits,
                          partial=r < a.repeats - 1)
    bench.close()
    print(markdown_table(result))
    print("wrote", a.out)
    return result


if __name__ == "__main__":
    main()
