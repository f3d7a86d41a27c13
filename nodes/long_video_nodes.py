"""IASA Long Video: a model patch that samples clips of any length in overlapping windows of the trained length."""
from __future__ import annotations

from comfy_api.latest import io

from ..sampling.long_video import FUSE_MODES, LongVideoConfig, LongVideoPatch, apply_long_video


class IASALongVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASALongVideo",
            display_name="IASA Long Video",
            category="IASA/sampling",
            description="Lets a video model make clips longer than it was trained on. At every sampling step the "
                        "model runs on overlapping windows of its trained length and the windows' predictions are "
                        "blended frame by frame where they overlap (the paper's progressive fusion). Every window "
                        "gets its own frames of the control video (Fun-Control, Animate pose) and of IASA Sparse "
                        "Attention's pose layout, and the same reference picture. A model patch: use it with any "
                        "sampler (KSampler, SamplerCustom, IASA's student sampler), before or after IASA Sparse "
                        "Attention. Clips no longer than one window run unchanged.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The video model to patch (Wan 2.1/2.2 family: T2V, I2V, Fun-Control, "
                                                "VACE, Animate; IASA-mini), with or without IASA Sparse Attention."),
                io.Int.Input("window_frames", default=49, min=5, max=4097, step=4,
                             tooltip="Frames per window, in video frames (1 + 4k). Use the length the model was "
                                     "trained on (the `frames` of its model card): 49 for IASA-mini v2 (13 latent "
                                     "frames), 81 for Wan 2.1/2.2. Longer clips are split into windows of this "
                                     "length; shorter ones run unchanged."),
                io.Int.Input("overlap_frames", default=16, min=0, max=4096, step=4,
                             tooltip="Video frames shared by neighbouring windows, where their predictions are "
                                     "blended (rounded up to whole latent frames of 4 video frames; must be "
                                     "smaller than the window). More overlap: smoother joins, more model calls."),
                io.Combo.Input("fuse", options=list(FUSE_MODES), default="ramp",
                               tooltip="How overlapping windows are blended per frame. ramp: each window fades in "
                                       "and out linearly across its overlaps (a crossfade). triangle: MimicMotion's "
                                       "weights, highest in the middle of each window. flat: plain average."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, window_frames, overlap_frames, fuse) -> io.NodeOutput:
        config = LongVideoConfig.from_pixel_frames(window_frames, overlap_frames, fuse)
        return io.NodeOutput(apply_long_video(model, LongVideoPatch(config)))
