"""IASA Build Dataset: videos with speech from the input folder -> training shards (training/video_dataset.py),
plus, with a VAE, the latents and ground truth IASA Distill Student reads, encoded once."""
from __future__ import annotations

from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..training import distributed as D
from ..training.distill.train import parse_args, prepare_data
from ..training.video_dataset import build_dataset, list_videos
from .distill_inputs import output_name_problem, output_stem, vae_copy, vae_module
from .files import input_folder_problem, list_input_folders, resolve_input_folder
from .types import DatasetType

CACHE = ".iasa_cache"


def latents_cache(folder: Path, frames: int) -> Path:
    """Where the dataset's latents for ``frames``-frame windows live (outside the shard glob)."""
    return folder / CACHE / f"latents_f{frames}.safetensors"


class IASABuildDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASABuildDataset",
            display_name="IASA Build Dataset",
            category="IASA/training",
            description="Turns a folder of videos with speech into training shards: pose and region masks "
                        "(mediapipe, as IASA Extract Pose), speech energy, square frames; with a VAE also the "
                        "latents IASA Distill Student trains on. Writes input/<output_name>/.",
            is_experimental=True,
            inputs=[
                io.Combo.Input("videos", options=list_input_folders() or [""],
                               tooltip="A folder inside ComfyUI's input folder holding the videos (each with a "
                                       "speech track and one visible speaker)."),
                io.String.Input("output_name", default="iasa_dataset",
                                tooltip="Name of the shard folder created in ComfyUI's input folder (no path); "
                                        "shard-*.safetensors already there are replaced."),
                io.Int.Input("size", default=256, min=16, max=1024, step=16,
                             tooltip="Side of the square training frames (centre crop, resized)."),
                io.Float.Input("fps", default=25.0, min=0.0, max=120.0, step=0.5,
                               tooltip="Frame rate of the clips; 0 keeps each video's own."),
                io.Float.Input("max_seconds", default=6.0, min=0.5, max=600.0, step=0.5,
                               tooltip="Longer videos are cut into clips of at most this length."),
                io.Int.Input("heldout_every", default=8, min=0, max=1000,
                             tooltip="Every N-th clip goes to the held-out split (0 = all for training)."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The teacher's VAE: also encode the latents for IASA Distill Student now."),
                io.Int.Input("frames", default=17, min=5, max=161, step=4,
                             tooltip="Window length (frames) of those latents; use the same in IASA Distill Student."),
            ],
            outputs=[DatasetType.Output(display_name="dataset")],
        )

    @classmethod
    def validate_inputs(cls, videos, output_name):
        return input_folder_problem(videos, "videos") or output_name_problem(output_name) or True

    @classmethod
    def execute(cls, videos, output_name, size, fps, max_seconds, heldout_every, frames, vae=None) -> io.NodeOutput:
        if (frames - 1) % 4:
            raise ValueError(f"frames: must be 1 + 4k (5, 9, 13, 17, ...), got {frames}")
        source = Path(resolve_input_folder(videos, "videos"))
        out = Path(folder_paths.get_input_directory()) / output_stem(output_name)
        if out.resolve() == source.resolve():
            raise ValueError("output_name: the shards would overwrite the videos' folder; choose another name")
        try:
            files = list_videos(source)
        except ValueError as e:
            raise ValueError(f"videos: {e}") from None
        bar = comfy.utils.ProgressBar(len(files))
        summary = build_dataset(files, out, size=size, fps=fps, max_seconds=max_seconds, heldout_every=heldout_every,
                                progress=lambda done, total: bar.update_absolute(done, total))
        if summary["train"] == 0:
            raise ValueError(f"heldout_every: all {summary['clips']} clips went to the held-out split; use 0 or a "
                             f"larger value")
        if vae is not None:
            with torch.inference_mode(False):
                vae_m = vae_module(vae)
                cache = latents_cache(out, frames)
                vae_file = vae_copy(vae_m, cache.parent / "vae.safetensors")
                a = parse_args(["--vae", str(vae_file), "--data", str(out), "--out", str(cache.parent),
                                "--frames", str(frames), "--latents-cache", str(cache), "--render-workers", "1"])
                prepare_data(a, D.DistInfo(), vae_m.to(comfy.model_management.get_torch_device()),
                             comfy.model_management.get_torch_device())
            summary.update(latents_cache=str(cache), frames=frames)
        return io.NodeOutput(summary)
