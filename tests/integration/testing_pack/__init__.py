"""Test-only ComfyUI nodes, loaded into the integration tests' server beside the pack:

- ``IASATestMaskedReference``: replaces Wan self-attention by plain SDPA with the token-level mask of
  paper Eq. 1-3 computed by brute force (attention/reference.py), no permutation, no blocks — the
  explicit masked attention the pack's patched model must match;
- ``IASATestReinstallingOverride``: a stand-in for newer ComfyUI's core "Model Sparse Attention" (on top,
  chained, re-installed every step), to check the pack with both on;
- ``IASATestDWPoseOutput``: comfyui_controlnet_aux's DWPose output (a fixture, untouched), for interop;
- ``IASATestCountingOverride`` / ``IASATestReadCounter``: a stand-in for another pack's attention patch
  (counts self- and cross-attention calls and runs ComfyUI's own backend), to check that the pack
  chains an override that was set before it.
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
from iasa.attention.patch import grid_from_call  # noqa: E402
from iasa.attention.pose_layout import SparseAttentionConfig, build_pose_layout  # noqa: E402
from iasa.attention.reference import reference_token_mask  # noqa: E402
from iasa.pose.keypoints import from_pose_keypoint  # noqa: E402

PoseKeypoint = io.Custom("POSE_KEYPOINT")
COUNTS: Counter = Counter()


class _Reference:
    def __init__(self, pose, config):
        self.pose, self.config, self.masks = pose, config, {}

    def __deepcopy__(self, memo):
        return self

    def wrapper(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        grid = grid_from_call(executor.class_obj, x, kwargs)
        if grid not in self.masks:
            plan = build_pose_layout(self.pose, grid, self.config)
            self.masks[grid] = reference_token_mask(plan.labels, plan.frame_select, grid)
        transformer_options = {**transformer_options, "iasa_test_mask": self.masks[grid]}
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def attention(self, func, q, k, v, heads=None, transformer_options=None, **kwargs):
        mask = (transformer_options or {}).get("iasa_test_mask")
        if mask is None or q.shape[1] != k.shape[1] or q.shape[1] != mask.shape[0]:
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
        return io.NodeOutput(m)


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
        return [IASATestMaskedReference, IASATestCountingOverride, IASATestReadCounter, IASATestDWPoseOutput,
                IASATestReinstallingOverride]


async def comfy_entrypoint():
    return TestingExtension()
