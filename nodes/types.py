"""Custom ComfyUI socket types of the pack."""
from comfy_api.latest import io

# The OpenPose/DWPose JSON list that comfyui_controlnet_aux emits (DWPose users can connect it directly).
PoseKeypoint = io.Custom("POSE_KEYPOINT")
# Per-video-frame audio features (audio.features.AudioFeatures).
AudioFeaturesType = io.Custom("IASA_AUDIO_FEATURES")
# A folder of training shards made by IASA Build Dataset: {"path": str, "clips": int, "shards": [str, ...]}.
DatasetType = io.Custom("IASA_DATASET")
