"""IASA Latent Preview: sampling previews in the IASA-mini VAE's colours."""
from __future__ import annotations

import copy
import logging

from comfy_api.latest import io

from ..preview.latent_rgb import DEFAULT_FILE, read_factors

log = logging.getLogger(__name__)


class IASALatentPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASALatentPreview",
            display_name="IASA Latent Preview",
            category="IASA/model",
            description="Makes ComfyUI's Latent2RGB sampling previews use a latent-to-RGB map fitted to the bundled "
                        "IASA-mini VAE (preview/iasa_mini_latent_rgb.json) instead of the real Wan 2.1 VAE's. "
                        "Previews show only when ComfyUI runs with --preview-method auto (or latent2rgb).",
            inputs=[io.Model.Input("model", tooltip="The IASA-mini model (or any Wan 2.1-latent model decoded by the "
                                                    "IASA-mini VAE).")],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        base = model.model
        factors, bias, meta = read_factors(DEFAULT_FILE, channels=base.latent_format.latent_channels)
        # ComfyUI 0.3.75 picks the previewer from model.model.latent_format before the sampler loads and patches
        # the model (latent_preview.prepare_callback), so a per-clone object patch would be seen one run late.
        # The loaded model's own format instance is replaced instead (a copy: the class keeps the stock factors);
        # it stays with that loaded model, which is what its latents mean.
        patched = copy.copy(base.latent_format)
        patched.latent_rgb_factors, patched.latent_rgb_factors_bias = factors, bias
        base.latent_format = patched
        log.info("IASA Latent Preview: previews of this model use factors fitted to %s (%.1f dB)",
                 meta.get("vae"), meta.get("fit_psnr_db", 0))
        return io.NodeOutput(model.clone())
