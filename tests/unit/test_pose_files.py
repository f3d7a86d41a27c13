"""Pose JSON files: DWPose / controlnet_aux lists, single frames, OpenPose BODY_25, and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from iasa.pose.keypoints import B, from_pose_keypoint, to_pose_keypoint
from iasa.pose.pose_files import BODY25_TO_COCO18, PoseFileError, parse_pose_json, read_pose_file, write_pose_file
from iasa.training.synth.demo_assets import DEFAULT_SEED, make_demo_speaker

from .pose_factory import make_reference


def make_sequence(n: int, width: int, height: int):
    """The factory's reference pose on a ``width`` x ``height`` canvas, drifting a little per frame."""
    seq = make_reference().scaled_to(width, height).resampled(n)
    seq.points[..., 0] += np.arange(n, dtype=np.float32)[:, None] * (seq.points[..., 2] > 0)
    return seq


def _frames(n: int = 3) -> list[dict]:
    return to_pose_keypoint(make_sequence(n, width=320, height=240))


def test_list_of_frames_round_trips_through_a_file(tmp_path):
    frames = _frames(4)
    path = write_pose_file(tmp_path / "pose.json", frames)
    back = read_pose_file(path)
    assert len(back) == 4
    a = from_pose_keypoint(frames).points
    b = from_pose_keypoint(back).points
    np.testing.assert_allclose(a, b, atol=1e-3)
    assert back[0]["canvas_width"] == 320 and back[0]["canvas_height"] == 240


def test_one_frame_dict_and_utf8_bom_are_accepted(tmp_path):
    frame = _frames(1)[0]
    path = tmp_path / "one.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(frame).encode())
    back = read_pose_file(path)
    assert len(back) == 1 and back[0]["people"][0]["pose_keypoints_2d"] == frame["people"][0]["pose_keypoints_2d"]


def test_missing_parts_and_dwpose_68_face_points_are_fine():
    frame = _frames(1)[0]
    person = frame["people"][0]
    person["face_keypoints_2d"] = person["face_keypoints_2d"][: 68 * 3]
    del person["hand_left_keypoints_2d"]
    person["hand_right_keypoints_2d"] = None
    out = parse_pose_json([frame])
    p = out[0]["people"][0]
    assert len(p["face_keypoints_2d"]) == 68 * 3
    assert p["hand_left_keypoints_2d"] == [] and p["hand_right_keypoints_2d"] == []
    seq = from_pose_keypoint(out)
    assert seq.conf[0, 18:86].min() > 0 and seq.conf[0, 86:].max() == 0


def test_openpose_body25_without_canvas_uses_the_given_canvas():
    seq = make_sequence(1, width=640, height=480)
    coco = seq.points[0, :18]
    body25 = np.zeros((25, 3), np.float32)
    for c, j in enumerate(BODY25_TO_COCO18):
        body25[j] = coco[c]
    body25[8] = (coco[B["r_hip"]] + coco[B["l_hip"]]) / 2  # MidHip, dropped on conversion
    frame = {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": body25.ravel().tolist()}]}
    with pytest.raises(PoseFileError, match="canvas_width"):
        parse_pose_json(frame, "pose_file 'op.json'")
    out = parse_pose_json(frame, "pose_file 'op.json'", canvas=(640, 480))
    got = from_pose_keypoint(out).points[0, :18]
    np.testing.assert_allclose(got, coco, atol=1e-4)


def test_normalised_coordinates_pass_through():
    seq = make_sequence(1, width=200, height=100)
    frames = to_pose_keypoint(seq)
    person = frames[0]["people"][0]
    for key, vals in person.items():
        arr = np.asarray(vals).reshape(-1, 3)
        arr[:, 0] /= 200
        arr[:, 1] /= 100
        person[key] = arr.ravel().tolist()
    np.testing.assert_allclose(from_pose_keypoint(parse_pose_json(frames)).xy, seq.xy, atol=0.05)


def _person(**parts) -> dict:
    return {"people": [parts], "canvas_width": 8, "canvas_height": 8}


@pytest.mark.parametrize("data, words", [
    ([], ["empty list", "list of OpenPose frame dicts"]),
    (42, ["JSON int"]),
    ([{"canvas_width": 10, "canvas_height": 10}], ["frame 0", "'people' list"]),
    ([[1, 2, 3]], ["frame 0", "got list"]),
    ([{"people": ["x"], "canvas_width": 8, "canvas_height": 8}], ["person 0", "got str"]),
    ([_person(pose_keypoints_2d=[1, 2])], ["pose_keypoints_2d", "2 numbers", "54 or 75"]),
    ([_person(pose_keypoints_2d=["a"] * 54)], ["value 0", "'a'", "finite"]),
    ([_person(hand_left_keypoints_2d=[0.5] * 60)], ["hand_left_keypoints_2d", "63"]),
    ([_person(pose_keypoints_2d=5)], ["is a int"]),
    ([{"people": [], "canvas_width": -3, "canvas_height": 8}], ["canvas_width is -3"]),
    ([{"people": [], "canvas_width": 8, "canvas_height": 8}], ["no person", "1 frame"]),
])
def test_wrong_layouts_are_refused_with_the_place_and_the_fix(data, words):
    with pytest.raises(PoseFileError) as exc:
        parse_pose_json(data, "pose_file 'bad.json'")
    msg = str(exc.value)
    assert msg.startswith("pose_file 'bad.json'"), msg
    for w in words:
        assert w in msg, msg


def test_nan_is_refused():
    frame = _frames(1)[0]
    frame["people"][0]["pose_keypoints_2d"][4] = float("nan")
    with pytest.raises(PoseFileError, match="value 4 is nan"):
        parse_pose_json(frame)


@pytest.mark.parametrize("content, words", [
    (b"{not json", ["not valid JSON", "line 1"]),
    (b"\xff\xfe\x00garbage", ["not UTF-8"]),
])
def test_unreadable_files_name_the_file(tmp_path, content, words):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(PoseFileError) as exc:
        read_pose_file(path, "pose_file")
    msg = str(exc.value)
    assert "pose_file 'broken.json'" in msg
    for w in words:
        assert w in msg, msg


def test_demo_speaker_pose_is_the_drawn_pose():
    image, pose = make_demo_speaker(DEFAULT_SEED)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    seq = from_pose_keypoint(parse_pose_json(pose))
    assert len(seq) == 1 and seq.width == seq.height == 256
    assert seq.has_person().all() and seq.conf[0, 18:].min() == 1.0  # face and both hands present
    with pytest.raises(ValueError, match="training identity"):
        make_demo_speaker(5)
