"""IASA Tiny VAE Mode: run a tiny autoencoder (TAEHV, e.g. the bundled IASA-mini one) on all frames at once.
IASA VAE Precision: run a VAE in bf16 where the CPU computes bf16 natively (sampling/vae_precision.py).
IASA Long VAE Decode: decode a long video in windows restarted from key frames (sampling/rekeyed_decode.py)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..sampling.keyed_windows import PLAN_KEY, KeyedWindowPlan, decode_windows
from ..sampling.rekeyed_decode import (DEFAULT_KEY, DEFAULT_OVERLAP, DEFAULT_WINDOW, KEY_SOURCES, DecodeWindows,
                                       decode_rekeyed)
from ..sampling.vae_precision import MEMORY_FORMATS, PRECISIONS, with_precision
from ..training.tiny_vae import with_all_frames_at_once

logger = logging.getLogger(__name__)


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
                        "On a CPU the frame-by-frame default was faster (169 frames at 256x256 on 2 cores: 12.8 s "
                        "frame by frame, 33.0 s at once; bench/results/demo.json).",
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


class IASAVAEPrecision(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASAVAEPrecision",
            display_name="IASA VAE Precision",
            category="IASA/vae",
            description="ComfyUI runs every VAE in fp32 on a CPU. A CPU with native bf16 (AVX512-BF16 or AMX) decodes "
                        "in bf16 about 2.3x faster (the IASA-mini VAE on 2 cores; pictures 64 dB from fp32's), and "
                        "channels-last 3-D convolutions double that again. This returns a copy of the VAE in the "
                        "chosen precision and layout; the input VAE is unchanged. The choices are written to the log.",
            inputs=[
                io.Vae.Input("vae", tooltip="A VAE loaded with VAELoader (full or tiny)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="auto: bf16 on a CPU with native bf16, otherwise what ComfyUI chose (on a GPU "
                                       "ComfyUI already picks bf16 or fp16). bf16 / fp16 / fp32: that dtype anywhere "
                                       "(bf16 on a CPU without native bf16 is slower than fp32)."),
                io.Combo.Input("memory_format", options=list(MEMORY_FORMATS), default="auto", optional=True,
                               tooltip="auto: lay the 3-D convolution weights out channels-last on a CPU (oneDNN "
                                       "decodes the IASA-mini VAE 2x faster in bf16, 1.3x in fp32; same pictures) "
                                       "and on Hopper or newer GPUs (the Wan VAE 12 % faster on an H100), elsewhere "
                                       "leave them. channels_last / contiguous: that layout anywhere."),
            ],
            outputs=[io.Vae.Output(display_name="vae")],
        )

    @classmethod
    def execute(cls, vae, precision, memory_format="auto") -> io.NodeOutput:
        return io.NodeOutput(with_precision(vae, precision, memory_format=memory_format))


class IASALongVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASALongVAEDecode",
            display_name="IASA Long VAE Decode",
            category="IASA/vae",
            description="VAEDecode for long videos. A Wan 2.1 VAE decodes later frames from what it kept of the first "
                        "(key) frame; past its reach (~6 s for the bundled IASA-mini VAE) one pass falls apart, and "
                        "ComfyUI's temporal tiles cannot restart mid-video. This decodes overlapping windows and "
                        "restarts each from a key frame (the video's first latent, or the last frame already decoded, "
                        "encoded on its own). The overlaps are cross-faded. A video that fits one window is decoded "
                        "exactly as VAEDecode does. A latent from IASA Keyed Windows is decoded window by window as "
                        "that node planned (window, overlap and key are not used then).",
            inputs=[
                io.Latent.Input("samples", tooltip="The video latent to decode (e.g. from a sampler)."),
                io.Vae.Input("vae", tooltip="A Wan 2.1-layout VAE (the bundled iasa_mini_vae, Wan 2.1's VAE); with "
                                            "key 'decoded' it encodes the key frames too."),
                io.Int.Input("window", default=DEFAULT_WINDOW, min=2, max=1024,
                             tooltip="Latent frames per window (4 video frames each). Keep it within the span the "
                                     "VAE decodes well in one pass: 32 (= 125 frames) for the bundled VAE."),
                io.Int.Input("overlap", default=DEFAULT_OVERLAP, min=0, max=1022,
                             tooltip="Latent frames two windows share; cross-faded. Below window - 1."),
                io.Combo.Input("key", options=list(KEY_SOURCES), default=DEFAULT_KEY,
                               tooltip="The key frame each later window restarts from. first: the video's own first "
                                       "latent (no drift, nothing re-encoded). decoded: the decoded frame just "
                                       "before the window, encoded again (errors can add up window by window)."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, samples, vae, window, overlap, key=DEFAULT_KEY) -> io.NodeOutput:
        latent = samples["samples"]
        if PLAN_KEY in samples:   # IASA Keyed Windows: every window is a clip of its own
            plan = KeyedWindowPlan.from_dict(samples[PLAN_KEY])
            logger.info("IASA Long VAE Decode: %s", plan.describe())
            return io.NodeOutput(decode_windows(latent, plan, vae.decode))
        compression = getattr(vae, "temporal_compression_decode", lambda: None)()
        if latent.ndim != 5 or compression != 4:
            raise ValueError(f"vae/samples: IASA Long VAE Decode needs a video VAE with 4x temporal compression (Wan "
                             f"2.1 layout) and a video latent; got a VAE with temporal compression {compression} and a "
                             f"latent of shape {tuple(latent.shape)}. Use VAEDecode for images and other VAEs.")
        images = decode_rekeyed(latent, vae.decode, vae.encode, DecodeWindows(window, overlap, key))
        return io.NodeOutput(images.reshape(-1, *images.shape[-3:]))
