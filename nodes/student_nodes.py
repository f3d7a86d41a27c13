"""IASA Student Sampler and IASA Student Sigmas: sampling a few-step student the way it was trained.

Both read the student's card (timesteps, shift; ``training/distill/export.py`` finds it from the MODEL's
weights) and give the sigmas of its timesteps. The sampler runs exactly what stock ``SamplerCustom`` runs
with those sigmas, the stock ``lcm`` sampler (predict x0, re-noise to the next sigma) and cfg 1, so
``SamplerCustom`` + IASA Student Sigmas + ``KSamplerSelect(lcm)`` gives the same latent. Model patches
(IASA Sparse Attention, the long-video window wrapper) apply as with any sampler.
"""
from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..training.distill.export import find_student_card
from ..training.distill.schedule import MAX_STEPS, StudentSchedule
from .distill_inputs import model_files


def student_schedule(model, steps: int, input_name: str = "model") -> StudentSchedule:
    """The student's schedule (``steps`` of its timesteps; 0 = all) or a clear error."""
    found = find_student_card(model, model_files("diffusion_models"), model_files("loras"))
    if found is None:
        raise ValueError(f"{input_name}: not an IASA student: no student card is attached to it and no file in "
                         f"ComfyUI's diffusion_models or loras folders with a student card has its weights. Load a "
                         f"student written by IASA Distill Student with UNETLoader (or its teacher plus the "
                         f"student LoRA with LoraLoaderModelOnly); for a teacher use KSampler")
    card, _where = found
    schedule = StudentSchedule.from_card(card["student"])
    return schedule.subset(steps) if steps else schedule


def _steps_input() -> io.Int.Input:
    return io.Int.Input("steps", default=0, min=0, max=MAX_STEPS,
                        tooltip="Sampling steps; 0 = the number the student was trained for (its card). Fewer "
                                "steps use a subset of its trained timesteps.")


class IASAStudentSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASAStudentSigmas",
            display_name="IASA Student Sigmas",
            category="IASA/sampling",
            description="The sigmas of a few-step student's trained timesteps and shift (from its card), for stock "
                        "SamplerCustom with the lcm sampler and cfg 1.",
            inputs=[io.Model.Input("model", tooltip="A student made by IASA Distill Student (UNETLoader)."),
                    _steps_input()],
            outputs=[io.Sigmas.Output(display_name="sigmas")],
        )

    @classmethod
    def execute(cls, model, steps) -> io.NodeOutput:
        return io.NodeOutput(student_schedule(model, steps).sigmas())


class IASAStudentSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASAStudentSampler",
            display_name="IASA Student Sampler",
            category="IASA/sampling",
            description="Samples a few-step student (IASA Distill Student) with its trained timesteps and shift: "
                        "predict the clean latent, re-noise to the next timestep (LCM-style), cfg 1, no negative.",
            inputs=[
                io.Model.Input("model", tooltip="The student (UNETLoader), optionally behind IASA Sparse Attention "
                                                "and the long-video wrapper."),
                io.Conditioning.Input("positive", tooltip="Conditioning, e.g. Wan22FunControlToVideo's positive."),
                io.Latent.Input("latent", tooltip="The latent to fill, e.g. Wan22FunControlToVideo's latent."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed (same meaning as SamplerCustom's noise_seed)."),
                _steps_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, latent, seed, steps) -> io.NodeOutput:
        from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

        sigmas = student_schedule(model, steps).sigmas()
        latent = latent.copy()
        latent["samples"] = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = Noise_RandomNoise(seed).generate_noise(latent)
        x0_output: dict = {}
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1, x0_output)
        samples = comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object("lcm"), sigmas, positive,
                                             positive, latent["samples"], noise_mask=latent.get("noise_mask"),
                                             callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                                             seed=seed)
        out = latent.copy()
        out["samples"] = samples
        return io.NodeOutput(out)
