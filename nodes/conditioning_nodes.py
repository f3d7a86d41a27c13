"""IASA Empty Conditioning: text conditioning of the right shape for models that ignore text."""
from __future__ import annotations

import torch
from comfy_api.latest import io


class IASAEmptyConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASAEmptyConditioning",
            display_name="IASA Empty Conditioning",
            category="IASA/conditioning",
            description="All-zero text conditioning shaped like Wan's T5 output, for pose-driven models that use no "
                        "text (the bundled IASA-mini); saves loading a text encoder.",
            inputs=[
                io.Int.Input("tokens", default=512, min=1, max=4096,
                             tooltip="Number of text tokens (Wan uses 512)."),
                io.Int.Input("width", default=4096, min=1, max=16384,
                             tooltip="Embedding width of each token (Wan's text_dim, 4096 for umT5-XXL)."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, tokens, width) -> io.NodeOutput:
        return io.NodeOutput([[torch.zeros(1, tokens, width), {}]])
