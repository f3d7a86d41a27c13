"""Test-only ComfyUI nodes, loaded into the integration tests' server beside the pack:

- ``IASATestMaskedReference``: replaces Wan self-attention by plain SDPA with the token-level mask of
  paper Eq. 1-3 computed by brute force (tests/unit/attention_reference.py), no permutation, no blocks — the
  explicit masked attention the pack's patched model must match. It finds self-attention with its own
  wrapper around every block's ``self_attn.forward`` (not by sequence length, so that a video as long
  as the text is handled right);
- ``IASATestRandomConditioning``: text conditioning of random tokens (zeros would make every text key
  equal, and then any mask over them gives the same cross-attention output);
- ``IASATestPixelVAE``: a "VAE" whose latent is the picture's brightness, 8x8-pooled, frames grouped like
  Wan's causal VAE (frame 0, then 4 per latent frame; max over the group), in every channel: what a stock
  conditioning node encodes can be read back from the model's ``c_concat``;
- ``IASATestCaptureLayout`` / ``IASATestReadCapture``: record, in the sampled model call, the region labels
  of the IASA layout that was used and the control latent the model received (token grid), to check that
  the regions sit on the body the model sees;
- ``IASATestReinstallingOverride``: a stand-in for newer ComfyUI's core "Model Sparse Attention" (on top,
  chained, re-installed every step), to check the pack with both on;
- ``IASATestDWPoseOutput``: comfyui_controlnet_aux's DWPose output (a fixture, untouched), for interop;
- ``IASATestCountingOverride`` / ``IASATestReadCounter``: a stand-in for another pack's attention patch
  (counts self- and cross-attention calls and runs ComfyUI's own backend), to check that the pack
  chains an override that was set before it;
- ``IASATestPatchStats``: after sampling, the counters of the pack's patches on a MODEL (IASA Long Video's
  windowed calls, IASA Sparse Attention's sparse calls), read and reset.
- ``IASATestNotWanModel``: a MODEL whose diffusion model is not a Wan DiT (a tiny stand-in, no weights file),
  for the "not a Wan model" errors.
"""
from __future__ import annotations

import pathlib
import sys
from collections import Counter

import torch
import torch.nn.functional as F
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from iasa_cli import register_package  # noqa: E402

register_package()
from iasa.attention.wan_grid import grid_from_call  # noqa: E402
from iasa.attention.pose_layout import SparseAttentionConfig, build_pose_layout  # noqa: E402
from iasa.tests.unit.attention_reference import reference_token_mask  # noqa: E402
from iasa.pose.keypoints import from_pose_keypoint  # noqa: E402

PoseKeypoint = io.Custom("POSE_KEYPOINT")
COUNTS: Counter = Counter()


class _Reference:
    def __init__(self, pose, config):
        self.pose, self.config, self.masks = pose, config, {}

    def __deepcopy__(self, memo):
        return self

    def wrapper(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        grid = grid_from_call(executor.class_obj, x, kwargs, c_concat)
        if grid not in self.masks:
            plan = build_pose_layout(self.pose, grid, self.config)
            self.masks[grid] = reference_token_mask(plan.labels, plan.frame_select, grid)
        transformer_options = {**transformer_options, "iasa_test_mask": self.masks[grid]}
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def attention(self, func, q, k, v, heads=None, transformer_options=None, **kwargs):
        to = transformer_options or {}
        mask = to.get("iasa_test_mask")
        if mask is None or not to.get("iasa_test_self"):
            COUNTS["reference_dense"] += 1
            return func(q, k, v, heads=heads, transformer_options=transformer_options, **kwargs)
        COUNTS["reference_masked"] += 1
        b, L, hd = q.shape
        qh, kh, vh = (t.view(b, L, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=torch.as_tensor(mask, device=q.device))
        return out.transpose(1, 2).reshape(b, L, hd)


class IASATestMaskedReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestMaskedReference", category="IASA/testing",
                         inputs=[io.Model.Input("model"), PoseKeypoint.Input("pose"), io.Int.Input("top_k", default=2),
                                 io.Combo.Input("direction", options=["causal", "bidirectional"])],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, pose, top_k, direction):
        import comfy.patcher_extension

        config = SparseAttentionConfig(top_k=top_k, causal=direction == "causal", block_size=16)
        ref = _Reference(from_pose_keypoint(pose), config)
        m = model.clone()
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = ref.attention
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "iasa_test", ref.wrapper)
        dm = m.model.diffusion_model
        for path in [f"blocks.{i}" for i in range(len(dm.blocks))] + \
                [f"vace_blocks.{i}" for i in range(len(getattr(dm, "vace_blocks", ())))]:
            name = f"diffusion_model.{path}.self_attn.forward"
            m.add_object_patch(name, _MarkSelfAttention(m.get_model_object(name)))
        return io.NodeOutput(m)


class _MarkSelfAttention:
    def __init__(self, forward):
        self.forward = forward

    def __call__(self, x, freqs, transformer_options={}, **kwargs):  # noqa: B006
        return self.forward(x, freqs, transformer_options={**transformer_options, "iasa_test_self": True}, **kwargs)


def _counting_override(func, q, k, v, *args, **kwargs):
    COUNTS["self" if q.shape[1] == k.shape[1] else "cross"] += 1
    return func(q, k, v, *args, **kwargs)


class IASATestCountingOverride(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestCountingOverride", category="IASA/testing",
                         inputs=[io.Model.Input("model")], outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model):
        COUNTS.clear()
        m = model.clone()
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = _counting_override
        return io.NodeOutput(m)


class IASATestReadCounter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestReadCounter", category="IASA/testing", is_output_node=True,
                         inputs=[io.Latent.Input("latent")], outputs=[])

    @classmethod
    def fingerprint_inputs(cls, latent):
        return float("nan")  # always run

    @classmethod
    def execute(cls, latent):
        return io.NodeOutput(ui={"counts": [dict(COUNTS)]})


def patch_objects(model) -> dict:
    """The objects behind the pack's wrappers on ``model`` (bound methods with a ``stats`` Counter), by class."""
    found = {}
    for by_key in model.wrappers.values():
        for fns in by_key.values():
            for fn in fns:
                obj = getattr(fn, "__self__", None)
                if isinstance(getattr(obj, "stats", None), Counter):
                    found[type(obj).__name__] = obj
    return found


class IASATestPatchStats(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestPatchStats", category="IASA/testing", is_output_node=True,
                         inputs=[io.Model.Input("model"), io.Latent.Input("latent")], outputs=[])

    @classmethod
    def fingerprint_inputs(cls, model, latent):
        return float("nan")  # always run

    @classmethod
    def execute(cls, model, latent):
        stats = {}
        for name, obj in patch_objects(model).items():
            stats[name] = dict(obj.stats)
            obj.stats.clear()  # a cached patch node reuses the object in the next prompt
        return io.NodeOutput(ui={"stats": [stats]})


class IASATestNotWanModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestNotWanModel", category="IASA/testing", inputs=[], outputs=[io.Model.Output()])

    @classmethod
    def execute(cls):
        import types

        return io.NodeOutput(types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=torch.nn.Conv2d(4, 4, 1))))


class IASATestRandomConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestRandomConditioning", category="IASA/testing",
                         inputs=[io.Int.Input("tokens", default=8), io.Int.Input("seed", default=0)],
                         outputs=[io.Conditioning.Output()])

    @classmethod
    def execute(cls, tokens, seed):
        gen = torch.Generator().manual_seed(seed)
        return io.NodeOutput([[torch.randn(1, tokens, 4096, generator=gen), {}]])


class PixelVAE:
    latent_channels = 16

    def spacial_compression_encode(self):
        return 8

    def encode(self, pixels):
        bright = pixels[..., :3].float().amax(dim=-1)                                 # [T, H, W]
        pooled = F.avg_pool2d(bright[:, None], 8)[:, 0]                                # [T, H/8, W/8]
        groups = [pooled[:1]] + [pooled[t:t + 4].amax(0, keepdim=True) for t in range(1, pooled.shape[0], 4)]
        lat = torch.cat(groups)                                                        # [T_lat, h, w]
        return lat[None, None].expand(1, 16, *lat.shape).contiguous()


class IASATestPixelVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestPixelVAE", category="IASA/testing", inputs=[], outputs=[io.Vae.Output()])

    @classmethod
    def execute(cls):
        return io.NodeOutput(PixelVAE())


CAPTURE: dict = {}


def _capture_wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
    out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    patch = transformer_options["optimized_attention_override"].__self__          # the IASA patch
    plan = next(iter(patch._layouts.values()))
    background = executor.class_obj.process_latent_in(torch.zeros(1, 16, 1, 1, 1, device=x.device))[0, 0]
    # Where each stock conditioning put the (pixel-VAE) control video, per latent frame and token, channel 0:
    # Fun-Control's concat image, VACE's reactive frames, Animate's pose latents.
    sources = {"c_concat": None if c_concat is None else c_concat[0, 0],
               "vace": kwargs["vace_context"][0, 0, 16] if "vace_context" in kwargs else None,
               "pose": kwargs["pose_latents"][0, 0] if "pose_latents" in kwargs else None}
    g = plan.grid
    CAPTURE.update(labels=plan.labels.tolist(), grid=g.describe(), notes=list(plan.notes),
                   offsets={"ref_tokens_before": g.ref_tokens_before, "leading_ref_frames": g.leading_ref_frames,
                            "continued_frames": g.continued_frames, "video_frames": g.video_frames,
                            "extra_frames_after": g.extra_frames_after, "seq_len": g.seq_len},
                   sources={k: F.max_pool2d((v.float() - background).abs()[:, None], 2)[:, 0].cpu().tolist()
                            for k, v in sources.items() if v is not None})
    return out


class IASATestCaptureLayout(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestCaptureLayout", category="IASA/testing",
                         inputs=[io.Model.Input("model")], outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model):
        import comfy.patcher_extension

        CAPTURE.clear()
        m = model.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "iasa_test_capture", _capture_wrapper)
        return io.NodeOutput(m)


class IASATestReadCapture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestReadCapture", category="IASA/testing", is_output_node=True,
                         inputs=[io.Latent.Input("latent")], outputs=[])

    @classmethod
    def fingerprint_inputs(cls, latent):
        return float("nan")  # always run

    @classmethod
    def execute(cls, latent):
        return io.NodeOutput(ui={"capture": [dict(CAPTURE)]})


class _ReinstallingOverride:
    """Behaves like newer ComfyUI's "Model Sparse Attention" (comfy_extras/nodes_sparse_attention.py): its override
    goes on top of whatever override is there and chains to it, and an ON_PREPARE_STATE callback puts it back on top
    every step (idempotent once on top). It declines every call, as that node does off CUDA, passing it to the
    earlier override; with ``take_self`` it computes self-attention itself (dense SDPA), as that node's kernel
    takes the eligible self-attention calls on a GPU."""

    def __init__(self, take_self: bool):
        self.take_self = take_self
        self.installed = set()

    def __deepcopy__(self, memo):
        return self

    def make(self, previous):
        def override(func, q, k, v, heads, mask=None, **kwargs):
            COUNTS["standin_seen"] += 1
            if self.take_self and mask is None and q.shape == k.shape:
                COUNTS["standin_took"] += 1
                b, L, hd = q.shape
                qh, kh, vh = (t.view(b, L, heads, hd // heads).transpose(1, 2) for t in (q, k, v))
                return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, L, hd)
            if previous is None:
                return func(q, k, v, heads, mask=mask, **kwargs)
            return previous(func, q, k, v, heads, mask=mask, **kwargs)
        return override

    def install(self, transformer_options):
        current = transformer_options.get("optimized_attention_override")
        if current in self.installed:
            return
        override = self.make(current)
        self.installed.add(override)
        COUNTS["standin_installs"] += 1
        transformer_options["optimized_attention_override"] = override


class IASATestReinstallingOverride(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestReinstallingOverride", category="IASA/testing",
                         inputs=[io.Model.Input("model"), io.Boolean.Input("take_self", default=False)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, take_self):
        import comfy.patcher_extension

        COUNTS.clear()
        patch = _ReinstallingOverride(take_self)
        m = model.clone()
        patch.install(m.model_options.setdefault("transformer_options", {}))

        def reinstall(model_patcher, timestep, model_options=None):   # newer ComfyUI also passes model_options
            patch.install((model_options or model_patcher.model_options).setdefault("transformer_options", {}))

        m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PREPARE_STATE, "iasa_test_reinstall", reinstall)
        return io.NodeOutput(m)


DWPOSE_FIXTURES = REPO / "tests" / "fixtures" / "dwpose"


class IASATestDWPoseOutput(io.ComfyNode):
    """Stand-in for comfyui_controlnet_aux's DWPose Estimator: emits a fixture's POSE_KEYPOINT untouched."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="IASATestDWPoseOutput", category="IASA/testing",
                         inputs=[io.Combo.Input("fixture", options=sorted(p.stem for p in DWPOSE_FIXTURES.glob("*.json")))],
                         outputs=[PoseKeypoint.Output(display_name="POSE_KEYPOINT")])

    @classmethod
    def execute(cls, fixture):
        import json

        return io.NodeOutput(json.loads((DWPOSE_FIXTURES / f"{fixture}.json").read_text()))


class TestingExtension(ComfyExtension):
    @override
    async def get_node_list(self):
        return [IASATestMaskedReference, IASATestCountingOverride, IASATestReadCounter, IASATestPatchStats,
                IASATestNotWanModel, IASATestRandomConditioning, IASATestPixelVAE, IASATestCaptureLayout,
                IASATestReadCapture, IASATestDWPoseOutput, IASATestReinstallingOverride]


async def comfy_entrypoint():
    return TestingExtension()
