"""IASA Sparse Attention: the pose-driven block-sparse self-attention patched into a Wan MODEL."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..attention.alignment import VideoAlignment
from ..attention.kernels import KERNELS
from ..attention.patch import DenseFallbackError, SparseAttentionPatch, apply_sparse_attention, check_wan_model
from ..attention.pose_layout import (REFERENCE_ATTENDS, BlockSizeError, PoseLayout, SparseAttentionConfig,
                                     build_pose_layout)
from ..attention.preview import layout_summary, render_layout_preview
from ..attention.wan_grid import preview_grid
from ..pose.keypoints import from_pose_keypoint
from .convert import frames_to_image
from .types import PoseKeypoint

log = logging.getLogger(__name__)

REGION_SWITCHES = (("face", ("face",)), ("hands", ("left_hand", "right_hand")), ("arms", ("arms",)),
                   ("torso", ("torso",)))


class IASASparseAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASASparseAttention",
            display_name="IASA Sparse Attention",
            category="IASA/attention",
            description="Input-aware sparse self-attention (paper Eq. 1-3) for ComfyUI's native Wan models: "
                        "tokens attend densely within their frame; across frames only to the same body region "
                        "(face, hands, arms, torso) in the K most similar frames. Computed by a block-sparse "
                        "kernel; cross-attention is untouched.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1/2.2 model (T2V, I2V, Fun-Control, VACE or Animate)."),
                PoseKeypoint.Input("pose", tooltip="The pose sequence that drives the video (one pose per frame)."),
                io.Int.Input("top_k", default=2, min=0, max=64,
                             tooltip="Other frames each frame may attend to, chosen by pose similarity (paper K)."),
                io.Combo.Input("direction", options=["causal", "bidirectional"], default="bidirectional",
                               tooltip="causal: only past frames (the paper's student); bidirectional: any frame "
                                       "(for bidirectional teachers such as stock Wan)."),
                io.Boolean.Input("face", default=True, tooltip="Face tokens attend to face tokens of other frames."),
                io.Boolean.Input("hands", default=True, tooltip="Hand tokens attend to the same hand in other frames."),
                io.Boolean.Input("arms", default=True, tooltip="Arm and shoulder tokens attend across frames."),
                io.Boolean.Input("torso", default=True, tooltip="Torso tokens attend across frames."),
                io.Int.Input("block_size", default=128, min=16, max=256, step=16,
                             tooltip="Kernel block (tokens). 128 for full-size models; 16-64 for tiny grids."),
                io.Int.Input("dense_blocks", default=0, min=0, max=64,
                             tooltip="Keep the first N transformer blocks dense."),
                io.Int.Input("dense_steps", default=0, min=0, max=1000,
                             tooltip="Keep the first N sampling steps dense."),
                io.Combo.Input("kernel", options=list(KERNELS), default="auto",
                               tooltip="auto: on a Hopper GPU with flash-attn-4 installed and block_size 128, "
                                       "flash (FlashAttention-4, the fastest measured); else the xformers paged "
                                       "kernel on CUDA, else FlexAttention; on the CPU grouped (query blocks "
                                       "sharing their key blocks attend together). sdpa is the exact reference "
                                       "(dense work under a mask)."),
                io.Boolean.Input("strict", default=False, optional=True,
                                 tooltip="Off: a self-attention call that cannot run sparse (no person in the pose, "
                                         "an unknown token layout, ...) runs dense, with a warning in the log once "
                                         "per run. On: stop with an error instead."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="The positive output of the stock Wan node (WanFunControlToVideo, "
                                              "Wan22FunControlToVideo, WanVaceToVideo, WanAnimateToVideo, ...): the "
                                              "preview and density then describe the frames the model will sample. "
                                              "Sampling itself always reads the latent."),
                io.Int.Input("frame_offset", default=0, min=0, max=1_000_000, optional=True,
                             tooltip="Pose frame shown in the video's first frame (for later chunks of "
                                     "WanAnimateToVideo: its video_frame_offset minus the continue_motion "
                                     "frames). The pose is cut to the video's frames, never stretched in time; "
                                     "draw the skeleton at the pose's aspect ratio (Render Pose width/height 0): "
                                     "the stock nodes centre-crop it to the video's aspect."),
                io.Int.Input("width", default=0, min=0, max=16384, step=8, optional=True,
                             tooltip="Video width for the preview when no conditioning is connected (0 = pose canvas)."),
                io.Int.Input("height", default=0, min=0, max=16384, step=8, optional=True,
                             tooltip="Video height for the preview when no conditioning is connected (0 = pose canvas)."),
                io.Int.Input("length", default=0, min=0, max=100_000, optional=True,
                             tooltip="Video length in frames for the preview when no conditioning is connected "
                                     "(0 = the pose's length)."),
                io.Combo.Input("reference_attends", options=list(REFERENCE_ATTENDS), default="everything",
                               optional=True,
                               tooltip="What the reference picture's tokens (ref_conv) attend to. everything: the "
                                       "whole video, as dense attention does (the bundled models were trained so). "
                                       "itself: only each other, a third less attention work at 480p; a model "
                                       "not trained so changes its output, so compare before switching."),
            ],
            outputs=[
                io.Model.Output(display_name="model"),
                io.Image.Output(display_name="layout_preview"),
                io.String.Output(display_name="density"),
            ],
        )

    @classmethod
    def execute(cls, model, pose, top_k, direction, face, hands, arms, torso, block_size, dense_blocks,
                dense_steps, kernel, strict=False, conditioning=None, frame_offset=0, width=0, height=0,
                length=0, reference_attends="everything") -> io.NodeOutput:
        check_wan_model(model)
        seq = from_pose_keypoint(pose, input_name="pose")
        switches = {"face": face, "hands": hands, "arms": arms, "torso": torso}
        regions = tuple(r for name, rs in REGION_SWITCHES if switches[name] for r in rs)
        config = SparseAttentionConfig(top_k=top_k, causal=direction == "causal", regions=regions,
                                       block_size=block_size, reference_attends=reference_attends)
        alignment = VideoAlignment(frame_offset=frame_offset)
        patch = SparseAttentionPatch(seq, config, kernel=kernel, dense_blocks=dense_blocks, dense_steps=dense_steps,
                                     strict=strict, alignment=alignment)
        patched = apply_sparse_attention(model, patch)
        grid, source, known = preview_grid(model.model, seq, conditioning, width, height, length)
        try:
            plan = build_pose_layout(seq, grid, config, alignment=alignment)
        except BlockSizeError as exc:
            if known:  # the video that will be sampled: a clear error now, before sampling starts
                raise
            # a guess from the pose's canvas and length: the sampled video decides (checked at sampling)
            log.warning("IASA Sparse Attention: no preview on the guessed video size: %s", exc)
            summary = (f"{grid.describe()} ({source}); no preview: {exc}. The layout is built from the "
                       "sampled video; a video of this size stops sampling with this error")
            return io.NodeOutput(patched, frames_to_image(render_layout_preview(PoseLayout(grid=grid, config=config))[None]),
                                 summary)
        if plan.layout is None and strict:
            raise DenseFallbackError(f"pose: IASA Sparse Attention (strict) cannot build a sparse layout: "
                                     f"{plan.fallback_reason}. Connect a pose with a visible person, or turn "
                                     "strict off to sample with dense attention.")
        preview = render_layout_preview(plan)
        return io.NodeOutput(patched, frames_to_image(preview[None]), layout_summary(plan, source, strict))
