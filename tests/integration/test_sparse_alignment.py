"""The sparse layout covers the frames and pixels the model actually sees, through the real server: a pose of
another aspect ratio and length, drawn as a skeleton video and conditioned by stock WanFunControlToVideo
(which cuts it to ``length`` and centre-crops it), gets region tokens on the body in the model's input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from iasa.attention.grid import TokenGrid
from iasa.attention.token_regions import token_labels
from iasa.pose.keypoints import PoseSequence, to_pose_keypoint
from iasa.pose.pose_files import write_pose_file
from iasa.pose.synthetic import talking_pose

FUN_WAN = "iasa_test_fun_wan.safetensors"
POSE_FILE = "iasa_test_wide_pose.json"
POSE_FRAMES, VIDEO_FRAMES, SIZE = 33, 25, 128


def wide_moving_pose() -> PoseSequence:
    """A speaker on a 512x256 canvas (2:1), left of centre, walking right 3 px per frame, 33 frames."""
    p = talking_pose(POSE_FRAMES, 256, 256, seed=2)
    pts = p.points.copy()
    for t in range(POSE_FRAMES):
        present = pts[t, :, 2] > 0
        pts[t, present, 0] += 128 - 100 + 3.0 * t
    return PoseSequence(pts, 512, 256)


@pytest.fixture(scope="module")
def fun_model(server):
    import torch

    from iasa.training.tiny_wan import TeacherConfig, build_teacher, save_model

    model = build_teacher(TeacherConfig(dim=128, num_layers=1, ffn_dim=256, ref_conv=False), seed=0)  # in_dim 48
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    (server.base / "models" / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_model(model, server.base / "models" / "diffusion_models" / FUN_WAN, {"purpose": "tests"}, dtype=torch.float32)
    write_pose_file(server.base / "input" / POSE_FILE, to_pose_keypoint(wide_moving_pose()))
    return FUN_WAN


def prompt(model_file: str) -> dict:
    return {
        "1": {"class_type": "IASALoadPose", "inputs": {"pose_file": POSE_FILE, "canvas_width": 0, "canvas_height": 0}},
        "2": {"class_type": "IASARenderPose", "inputs": {"pose": ["1", 0], "width": 0, "height": 0, "body": True,
                                                         "face": True, "hands": True}},
        "3": {"class_type": "IASATestPixelVAE", "inputs": {}},
        "4": {"class_type": "IASAEmptyConditioning", "inputs": {"tokens": 8, "width": 4096}},
        "5": {"class_type": "WanFunControlToVideo", "inputs": {"positive": ["4", 0], "negative": ["4", 0], "vae": ["3", 0],
                                                               "width": SIZE, "height": SIZE, "length": VIDEO_FRAMES,
                                                               "batch_size": 1, "control_video": ["2", 0]}},
        "6": {"class_type": "UNETLoader", "inputs": {"unet_name": model_file, "weight_dtype": "default"}},
        "7": {"class_type": "IASASparseAttention", "inputs": {
            "model": ["6", 0], "pose": ["1", 0], "top_k": 2, "direction": "causal", "face": True, "hands": True,
            "arms": True, "torso": True, "block_size": 16, "dense_blocks": 0, "dense_steps": 0, "kernel": "sdpa",
            "strict": True, "conditioning": ["5", 0]}},
        "8": {"class_type": "IASATestCaptureLayout", "inputs": {"model": ["7", 0]}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["8", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "positive": ["5", 0],
                                                   "negative": ["5", 1], "latent_image": ["5", 2], "denoise": 1.0}},
        "10": {"class_type": "IASATestReadCapture", "inputs": {"latent": ["9", 0]}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["7", 2]}},
    }


def coverage(labels: np.ndarray, skeleton: np.ndarray) -> tuple[float, float]:
    """(share of the skeleton's tokens inside a region, share of region tokens on the skeleton)."""
    hit = (labels & skeleton).sum()
    return hit / skeleton.sum(), hit / labels.sum()


def test_regions_sit_on_the_body_the_model_sees(client, fun_model):
    result = client.run(prompt(fun_model), timeout=900)
    assert result.status == "success", result.error
    cap = result.outputs["10"]["capture"][0]
    labels = np.array(cap["labels"]) > 0                        # [7 latent frames, 8, 8] region tokens
    skeleton = np.array(cap["sources"]["c_concat"]) > 0.02      # where the stock node put the skeleton
    assert labels.shape == skeleton.shape == (7, 8, 8) and skeleton.sum() > 50
    recall, precision = coverage(labels, skeleton)
    assert recall > 0.95 and precision > 0.75, (recall, precision)
    # What the layout used to do with the same pose (stretched to the video's length, scaled per axis) misses
    # the body: the check can tell the two apart.
    pose = wide_moving_pose()
    old = token_labels(pose.resampled(VIDEO_FRAMES).scaled_to(SIZE, SIZE), TokenGrid.from_latent_shape((7, 16, 16))) > 0
    assert coverage(old, skeleton)[0] < 0.7
    # The node's text describes the sampled video (read from the conditioning) and what was done to the pose.
    text = result.outputs["11"]["text"][0]
    assert "7 latent frames x 8x8 tokens" in text and "video from the conditioning" in text
    assert "the last 8 are not used" in text and "centre-cropped to 256x256 at (128, 0)" in text
    assert any("the last 8 are not used" in n for n in cap["notes"])
