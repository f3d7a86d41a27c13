"""The "speech + driving video" example: the driving video's body motion is retargeted onto the reference
while the lips follow the speech (the example workflow run as shipped, plus Save Pose nodes to read poses)."""
from __future__ import annotations

import json

import numpy as np

from iasa.pose.keypoints import B, FACE, FACE_INNER_LIP, from_pose_keypoint

from .conftest import load_api_workflow


def _pose(client, result, node):
    (entry,) = result.outputs[node]["pose_files"]
    return from_pose_keypoint(json.loads(client.view(entry["filename"], entry["subfolder"], "output")))


def test_speech_driving_video_retargets_body_motion_with_lips_from_speech(client):
    prompt = load_api_workflow("iasa_speech_driving_video.json")
    assert prompt["5"]["inputs"]["driving_pose"] == ["11", 0]
    prompt["20"] = {"class_type": "IASASavePose", "inputs": {"pose": ["5", 0], "filename_prefix": "iasa_test/driven"}}
    prompt["21"] = {"class_type": "IASASavePose", "inputs": {"pose": ["11", 0], "filename_prefix": "iasa_test/driving"}}
    result = client.run(prompt, timeout=900)
    assert result.status == "success", result.error
    driving, out = _pose(client, result, "21"), _pose(client, result, "20")
    assert len(driving) == 50 and len(out) == 170          # 2 s of driving video; ceil(6.786 s x 25)
    # The driving sway (18 px, 6 degrees) moves the shoulders; the output's shoulders follow it (pingpong).
    sway = driving.points[:, B["r_shoulder"], 0]
    moved = out.points[:50, B["r_shoulder"], 0]
    assert np.ptp(sway) > 15, np.ptp(sway)
    assert np.corrcoef(sway, moved)[0, 1] > 0.8
    # Lips come from the speech, not from the (closed-mouth) driving video: the mouth opens and closes.
    lips = out.points[:, FACE, :][:, list(FACE_INNER_LIP), 1]
    opening = lips.max(axis=1) - lips.min(axis=1)
    assert np.ptp(opening) > 2.0, np.ptp(opening)
