"""comfyui_controlnet_aux's DWPose POSE_KEYPOINT (fixtures in its documented layout, with and without face and
hands) goes straight into the pack's nodes; IASA Save Pose writes JSON that IASA Load Pose reads back."""
from __future__ import annotations

import json

import numpy as np
import pytest

from iasa.harness.demo import saved_files

from .conftest import REPO, speech_pose_nodes

FIXTURES = REPO / "tests" / "fixtures" / "dwpose"


def _saved_json(client, result, node: str) -> tuple[str, list]:
    (entry,) = result.outputs[node]["pose_files"]
    data = client.view(entry["filename"], entry["subfolder"], "output")
    return entry["filename"], json.loads(data)


@pytest.mark.parametrize("fixture", ["with_face_hands", "body_only"])
def test_dwpose_output_feeds_the_pack_and_saves_as_openpose_json(client, fixture):
    dw = json.loads((FIXTURES / f"{fixture}.json").read_text())
    nodes = speech_pose_nodes(seed=3)
    nodes["4"] = {"class_type": "IASATestDWPoseOutput", "inputs": {"fixture": fixture}}
    nodes.update({
        "6": {"class_type": "IASARenderPose", "inputs": {"pose": ["4", 0], "width": 0, "height": 0, "body": True,
                                                         "face": True, "hands": True}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "8": {"class_type": "IASASavePose", "inputs": {"pose": ["4", 0], "filename_prefix": f"iasa_test/dw_{fixture}"}},
        "9": {"class_type": "IASASavePose", "inputs": {"pose": ["5", 0], "filename_prefix": f"iasa_test/talk_{fixture}"}},
    })
    result = client.run(nodes)
    assert result.status == "success", result.error
    name, saved = _saved_json(client, result, "8")
    assert len(saved) == len(dw) == 2
    w, h = dw[0]["canvas_width"], dw[0]["canvas_height"]
    for t, (ours, theirs) in enumerate(zip(saved, dw)):
        assert (ours["canvas_width"], ours["canvas_height"]) == (w, h)
        a, b = ours["people"][0], theirs["people"][0]
        body = np.reshape(a["pose_keypoints_2d"], (-1, 3))
        expect = np.reshape(b["pose_keypoints_2d"], (-1, 3)) * [w, h, 1]     # normalised -> pixels
        np.testing.assert_allclose(body, expect, atol=2e-3)
        face = np.reshape(a["face_keypoints_2d"], (-1, 3))
        assert face.shape == (70, 3)
        if b["face_keypoints_2d"] is None:
            assert not face.any() and not np.any(a["hand_left_keypoints_2d"]), "absent parts must stay absent"
        else:
            np.testing.assert_allclose(face[:68], np.reshape(b["face_keypoints_2d"], (-1, 3)) * [w, h, 1], atol=2e-3)
            assert not face[68:].any()     # DWPose has no pupils
    # Audio To Pose animated the DWPose reference: one pose per video frame of the 1 s of speech.
    _, talking = _saved_json(client, result, "9")
    assert len(talking) == 25
    assert saved_files(result.outputs), "the skeleton preview saved nothing"
    # IASA Load Pose reads the saved file back: same frames, and saving it again gives the same JSON.
    client.upload(name, json.dumps(saved).encode())
    back = client.run({
        "1": {"class_type": "IASALoadPose", "inputs": {"pose_file": name, "canvas_width": 0, "canvas_height": 0}},
        "2": {"class_type": "IASASavePose", "inputs": {"pose": ["1", 0], "filename_prefix": f"iasa_test/back_{fixture}"}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    })
    assert back.status == "success", back.error
    assert back.outputs["3"]["text"] == ["2"]
    assert _saved_json(client, back, "2")[1] == saved
