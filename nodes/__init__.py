"""ComfyUI node classes of the IASA pack (thin: checks, conversions, calls into the library)."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .attention_nodes import IASASparseAttention
from .audio_nodes import IASAAudioFeatures, IASALoadAudio
from .conditioning_nodes import IASAEmptyConditioning
from .model_folders import register_bundled_model_folders
from .preview_nodes import IASALatentPreview
from .pose_nodes import IASAAudioToPose, IASAExtractPose, IASALoadPose, IASARenderPose, IASASavePose

NODES: list[type[io.ComfyNode]] = [
    IASALoadAudio, IASAAudioFeatures, IASAExtractPose, IASAAudioToPose, IASARenderPose, IASASparseAttention,
    IASAEmptyConditioning, IASALoadPose, IASASavePose, IASALatentPreview,
]

register_bundled_model_folders()


class IASAExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
