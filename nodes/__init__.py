"""ComfyUI node classes of the IASA pack (thin: checks, conversions, calls into the library)."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .attention_nodes import IASASparseAttention
from .audio_nodes import IASAAudioFeatures, IASALoadAudio
from .conditioning_nodes import IASAEmptyConditioning
from .dataset_nodes import IASABuildDataset
from .distill_inputs import register_feature_net_folder
from .distill_nodes import IASADistillStudent
from .long_video_nodes import IASAKeyedWindows, IASALongVideo
from .model_folders import register_bundled_model_folders
from .pose_nodes import IASAAudioToPose, IASAExtractPose, IASALoadPose, IASARenderPose, IASASavePose
from .preview_nodes import IASALatentPreview
from .student_nodes import IASAStudentSampler, IASAStudentSigmas
from .vae_nodes import IASALongVAEDecode, IASATinyVAEMode, IASAVAEPrecision

NODES: list[type[io.ComfyNode]] = [
    IASALoadAudio, IASAAudioFeatures, IASAExtractPose, IASAAudioToPose, IASARenderPose, IASASparseAttention,
    IASAEmptyConditioning, IASALoadPose, IASASavePose, IASALatentPreview, IASALongVideo, IASAKeyedWindows, IASAStudentSampler,
    IASAStudentSigmas, IASADistillStudent, IASABuildDataset, IASATinyVAEMode, IASAVAEPrecision, IASALongVAEDecode,
]

register_bundled_model_folders()
register_feature_net_folder()


class IASAExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
