"""IASA Tiny VAE Mode: run a tiny autoencoder (TAEHV, e.g. the bundled IASA-mini one) on all frames at once."""
from __future__ import annotations

from comfy_api.latest import io

from ..training.tiny_vae import with_all_frames_at_once


class IASATinyVAEMode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASATinyVAEMode",
            display_name="IASA Tiny VAE Mode",
            category="IASA/vae",
            description="ComfyUI decodes and encodes with a tiny autoencoder (TAEHV layout: the bundled "
                        "iasa_mini_tiny_vae, taew2_1, lighttaew2_1) one frame at a time. This returns the same VAE "
                        "running all frames at once: the same pictures, faster on a GPU, more memory (the real-time path). "
                        "On a CPU the frame-by-frame default was faster (169 frames at 256x256 on 2 cores: 10.8 s "
                        "frame by frame, 25.6 s at once; bench/results/demo.json).",
            inputs=[
                io.Vae.Input("vae", tooltip="A tiny autoencoder loaded with VAELoader (not a full Wan VAE)."),
                io.Boolean.Input("all_frames_at_once", default=True,
                                 tooltip="On: every frame in one pass (fast on a GPU). Off: ComfyUI's frame-by-frame "
                                         "default (least memory; faster on a CPU)."),
            ],
            outputs=[io.Vae.Output(display_name="vae")],
        )

    @classmethod
    def execute(cls, vae, all_frames_at_once) -> io.NodeOutput:
        return io.NodeOutput(with_all_frames_at_once(vae, all_frames_at_once))
