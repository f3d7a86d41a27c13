"""IASA Long Video (a model patch that samples clips of any length in overlapping windows of the trained length)
and IASA Keyed Windows (the same with every window a clip of its own)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..sampling.keyed_windows import PLAN_KEY, KeyedWindowPlan, encode_windows
from ..sampling.long_video import FUSE_MODES, LongVideoConfig, LongVideoPatch, apply_long_video


def window_frames_input(use: str) -> io.Int.Input:
    """The ``window_frames`` input of both long-video nodes: the model's trained length in video frames."""
    return io.Int.Input("window_frames", default=49, min=5, max=4097, step=4,
                        tooltip="Frames per window, in video frames (1 + 4k). Use the length the model was trained "
                                "on (the `frames` of its model card): 49 for IASA-mini v2 (13 latent frames), 81 for "
                                "Wan 2.1/2.2. " + use)


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
                window_frames_input("Longer clips are split into windows of this length; shorter ones run "
                                    "unchanged."),
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


class IASAKeyedWindows(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASAKeyedWindows",
            display_name="IASA Keyed Windows",
            category="IASA/sampling",
            description="Long videos for Fun-Control-style Wan models, as windows that are each a clip of their own. "
                        "The control video is cut into windows of the trained length that overlap by a few frames; each "
                        "window is encoded on its own, so it starts on a key frame as in training, instead of mid-clip "
                        "as a window of IASA Long Video does (past ~150 frames a Wan 2.1 VAE's one-pass latents lose "
                        "detail: +0.6 to +2.8 dB measured on the bundled teacher). The sampler runs all windows at "
                        "once on one latent; decode it with IASA Long VAE Decode, which decodes each window and "
                        "cross-fades the overlaps. Takes the place of IASA Long Video and of the control_video input of "
                        "Wan22FunControlToVideo (connect only its ref_image).",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The Fun-Control Wan model (bundled IASA-mini teacher or student, Wan "
                                                "2.2 Fun-Control), with or without IASA Sparse Attention."),
                io.Conditioning.Input("positive", tooltip="From Wan22FunControlToVideo (its ref_image is kept)."),
                io.Conditioning.Input("negative", tooltip="From Wan22FunControlToVideo; gets no control video "
                                                          "(the unconditional branch the bundled teacher was trained "
                                                          "with)."),
                io.Latent.Input("latent", tooltip="From Wan22FunControlToVideo: sets the video's length and size."),
                io.Vae.Input("vae", tooltip="The Wan 2.1-layout VAE that encodes the control video."),
                io.Image.Input("control_video", tooltip="The pose video (IASA Render Pose), at least as long as the "
                                                        "video."),
                window_frames_input("The video is covered by the fewest such windows that share overlap_frames."),
                io.Int.Input("overlap_frames", default=8, min=0, max=4096,
                             tooltip="Video frames neighbouring windows share, cross-faded in the decode."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative"), io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, vae, control_video, window_frames, overlap_frames
                ) -> io.NodeOutput:
        import comfy.latent_formats
        import comfy.utils
        import node_helpers

        samples = latent["samples"]
        if samples.ndim != 5:
            raise ValueError(f"latent: a video latent [B, C, T, h, w] is needed (from Wan22FunControlToVideo), got "
                             f"{tuple(samples.shape)}")
        plan = KeyedWindowPlan.from_latent_length(samples.shape[2], window_frames, overlap_frames)
        if control_video.shape[0] < plan.total_frames:
            raise ValueError(f"control_video: {control_video.shape[0]} frames for a video of {plan.total_frames}; "
                             "give a control video at least as long as the video (or lower the length)")
        scale = vae.spacial_compression_encode()
        height, width = samples.shape[-2] * scale, samples.shape[-1] * scale
        video = comfy.utils.common_upscale(control_video[: plan.total_frames].movedim(-1, 1), width, height,
                                           "bilinear", "center").movedim(1, -1)[..., :3]
        control = encode_windows(video, plan, vae.encode)
        channels = control.shape[1]
        shape = (samples.shape[0], channels, plan.latent_total, samples.shape[-2], samples.shape[-1])
        fmt = comfy.latent_formats.Wan22() if channels == 48 else comfy.latent_formats.Wan21()   # as the stock node
        empty = fmt.process_out(torch.zeros(shape)).repeat(1, 2, 1, 1, 1)
        with_control = empty.clone()
        with_control[:, :channels] = control.to(empty.dtype)
        mask = torch.ones((1, 4, plan.latent_total, shape[-2], shape[-1]))
        keys = {"concat_mask": mask, "concat_mask_index": channels}
        positive = node_helpers.conditioning_set_values(positive, {"concat_latent_image": with_control, **keys})
        negative = node_helpers.conditioning_set_values(negative, {"concat_latent_image": empty, **keys})
        out_latent = {"samples": torch.zeros(shape, dtype=samples.dtype), PLAN_KEY: plan.to_dict()}
        config = LongVideoConfig(plan.window_latents, 0)
        return io.NodeOutput(apply_long_video(model, LongVideoPatch(config, keyed=plan)), positive, negative,
                             out_latent)
